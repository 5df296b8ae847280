//! A replica for unit tests of the coordinator, reached through
//! [`ReplicaHandle::Fake`](super::ReplicaHandle::Fake) without a network.
//! Behind it is a real [`LocalReplica`] on an in-memory store, so the merge
//! rule, inline values and streams behave as on any replica; in front of it
//! are the faults a test sets ([`Faults`]): a delay before each answer, a
//! failure instead of one, and a ring of its own that it checks each
//! client's fence against (refusing as `ReplicaService` does). It keeps the
//! record of every call it was sent, so a test sees what reached it (a
//! read repair's write, a write planned again).
//!
//! Only the calls the coordinator makes are faked (`Write`, `WriteStream`,
//! `Read`, `ReadStream`); the others answer an error.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use prost::Message;

use super::service::{fence_accepts, fence_refusal};
use super::{LocalReplica, WriteMsg};
use crate::error::{Error, Result};
use crate::membership::fixed::FixedMembership;
use crate::proto::{Fence, ReadReply, RecordMeta, WriteReply};
use crate::ring::NodeId;
use crate::storage::{StorageOptions, Store};
use crate::version::{Clock, Version};

/// What a fake replica does instead of answering at once.
#[derive(Clone, Default)]
pub struct Faults {
    /// Waits this long before each answer (a slow replica).
    pub delay: Duration,
    /// Waits until this semaphore is closed (or gives a permit) before
    /// each answer: a replica slower than anything the test waits for.
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Answers every call with this error (a replica that is down, full,
    /// corrupt…), after the delay.
    pub fail: Option<fn(&NodeId) -> Error>,
    /// This replica's own rings: a client's call whose fence they do not
    /// accept is refused with [`Error::RingChanged`] and their view, as
    /// `ReplicaService::admit_plan` refuses it. `None`: every fence taken.
    pub ring: Option<Arc<FixedMembership>>,
}

/// One call a fake replica was sent.
#[derive(Debug, Clone)]
pub enum Call {
    /// A whole write (or tombstone) of this record; `fenced` when it came
    /// with a fence (a client's write, not a repair).
    Write {
        /// The record.
        meta: RecordMeta,
        /// Whether it carried a fence.
        fenced: bool,
    },
    /// A streamed write with this header.
    WriteStream {
        /// The header (size and checksum come in the trailer).
        header: RecordMeta,
    },
    /// A read of this key.
    Read {
        /// The key.
        key: String,
        /// Whether the value was asked for too (else the record alone).
        with_value: bool,
    },
    /// A value stream of this key.
    ReadStream {
        /// The key.
        key: String,
    },
}

/// A replica in memory with faults; shared by the test and the handles.
pub struct FakeReplica {
    /// The node it stands for.
    node: NodeId,
    /// The replica logic on its own store and clock.
    local: LocalReplica,
    /// What it does instead of answering at once; changed by the test.
    faults: Mutex<Faults>,
    /// Every call it was sent, in order.
    calls: Mutex<Vec<Call>>,
}

impl FakeReplica {
    /// A replica standing for `node`, holding nothing, answering at once.
    pub fn new(node: &NodeId) -> Result<Arc<FakeReplica>> {
        let store = Store::open(&StorageOptions {
            data_dir: None,
            fsync: false,
            disk_reserve: 0,
        })?;
        Ok(Arc::new(FakeReplica {
            node: node.clone(),
            local: LocalReplica {
                store,
                clock: Arc::new(Clock::new(node.hash64())),
                catching_up: Arc::new(AtomicBool::new(false)),
            },
            faults: Mutex::new(Faults::default()),
            calls: Mutex::new(Vec::new()),
        }))
    }

    /// The node it stands for.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Its store, to seed it (a stale copy) or look at what it holds.
    pub fn store(&self) -> &Store {
        &self.local.store
    }

    /// The version of `key` it holds, if any.
    pub fn holds(&self, key: &str) -> Option<Version> {
        self.local.store.version_of(key).ok().flatten()
    }

    /// Replaces its faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// Every call it was sent so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The records of the whole writes it was sent so far.
    pub fn writes(&self) -> Vec<RecordMeta> {
        self.calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Write { meta, .. } => Some(meta),
                _ => None,
            })
            .collect()
    }

    /// Records `call`, waits out the delay and fails as the faults say; a
    /// client's call is then checked against this replica's ring.
    async fn admit(&self, call: Call, key: &str, fence: Option<&Fence>) -> Result<()> {
        let write = matches!(call, Call::Write { .. } | Call::WriteStream { .. });
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
        let faults = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(gate) = &faults.gate {
            // Closed: every waiter goes on.
            let _ = gate.acquire().await;
        }
        if !faults.delay.is_zero() {
            tokio::time::sleep(faults.delay).await;
        }
        if let Some(fail) = faults.fail {
            return Err(fail(&self.node));
        }
        let (Some(membership), Some(fence)) = (&faults.ring, fence) else {
            return Ok(());
        };
        let (ring, agreed) = (membership.ring(), membership.agreed_ring());
        if fence_accepts(&ring, &agreed, key, fence, write) {
            return Ok(());
        }
        let refusal = fence_refusal(membership.ring_view(), &agreed, key, write);
        Err(Error::RingChanged {
            node: self.node.clone(),
            refusal: refusal.encode_to_vec().into(),
        })
    }

    /// A whole write, as `ReplicaHandle::write_fenced`.
    pub async fn write(
        &self,
        meta: RecordMeta,
        value: Bytes,
        fence: Option<Fence>,
    ) -> Result<WriteReply> {
        let call = Call::Write {
            meta: meta.clone(),
            fenced: fence.is_some(),
        };
        self.admit(call, &meta.key, fence.as_ref()).await?;
        self.local.write(meta, value).await
    }

    /// A streamed write, as `ReplicaHandle::write_stream`.
    pub async fn write_stream(
        &self,
        header: RecordMeta,
        fence: Option<Fence>,
        messages: impl Stream<Item = WriteMsg> + Unpin,
    ) -> Result<WriteReply> {
        let call = Call::WriteStream {
            header: header.clone(),
        };
        self.admit(call, &header.key, fence.as_ref()).await?;
        self.local.write_stream(header, messages.map(Ok)).await
    }

    /// A read, as `ReplicaHandle::read_fenced`.
    pub async fn read(
        &self,
        key: &str,
        inline_max: u64,
        fence: Option<Fence>,
    ) -> Result<ReadReply> {
        let call = Call::Read {
            key: key.to_string(),
            with_value: inline_max > 0,
        };
        self.admit(call, key, fence.as_ref()).await?;
        self.local.read(key, inline_max).await
    }

    /// A value stream, as `ReplicaHandle::read_stream`.
    pub async fn read_stream(
        &self,
        key: &str,
        version: Version,
        offset: u64,
        length: u64,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let call = Call::ReadStream {
            key: key.to_string(),
        };
        self.admit(call, key, None).await?;
        let rx = self
            .local
            .read_stream(key.to_string(), version, offset, length)?;
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    /// The error of a call the fake does not serve.
    pub fn unserved(&self, rpc: &str) -> Error {
        Error::internal(format!("a fake replica ({}) serves no {rpc}", self.node))
    }
}
