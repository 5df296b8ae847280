//! One client connection on bytes: a read buffer the [`Decoder`] takes
//! whole requests from (as many as a pipeline has sent), and a write buffer
//! of replies sent in one go.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frame::{Decoder, Frame, FrameError, Protocol};
use crate::metrics::{Direction, Metrics};

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Replies buffered before they are written even if more requests wait.
const WRITE_FLUSH_BYTES: usize = 256 * 1024;

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadEnd {
    /// The client closed between requests, or went idle past the timeout.
    Closed,
    /// The stream cannot be read on: answer this and close.
    Bad(FrameError),
    /// The socket failed, or the client closed halfway through a request.
    Broken(String),
}

/// A client connection.
pub struct Connection {
    /// The socket.
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    buffer: BytesMut,
    /// Turns bytes into requests, resumably.
    decoder: Decoder,
    /// Replies not yet written.
    out: BytesMut,
    /// A decoding error met after whole requests, reported once they are
    /// answered.
    failed: Option<FrameError>,
    /// Counts the bytes read and written.
    metrics: Metrics,
}

impl Connection {
    /// A connection over `stream`, refusing bulk strings over `max_bulk`,
    /// its bytes counted in `metrics`.
    pub fn new(stream: TcpStream, max_bulk: u64, metrics: Metrics) -> Connection {
        Connection {
            stream,
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
            decoder: Decoder::new(max_bulk),
            out: BytesMut::with_capacity(16 * 1024),
            failed: None,
            metrics,
        }
    }

    /// The requests the client has sent: waits (at most `idle`, for the
    /// whole of the first request: a client trickling bytes does not hold
    /// a connection forever) until at least one is whole, then takes every
    /// whole one already buffered, at most `max`.
    pub async fn read_requests(
        &mut self,
        max: usize,
        idle: Duration,
    ) -> Result<Vec<Frame>, ReadEnd> {
        if let Some(err) = self.failed.take() {
            return Err(ReadEnd::Bad(err));
        }
        let deadline = tokio::time::Instant::now() + idle;
        let mut requests = Vec::new();
        loop {
            while requests.len() < max {
                match self.decoder.decode(&mut self.buffer) {
                    Ok(Some(frame)) => requests.push(frame),
                    Ok(None) => break,
                    Err(err) => {
                        if requests.is_empty() {
                            return Err(ReadEnd::Bad(err));
                        }
                        // Answer what came before it first; the error
                        // comes back on the next call.
                        self.failed = Some(err);
                        return Ok(requests);
                    }
                }
            }
            if !requests.is_empty() {
                return Ok(requests);
            }
            self.buffer.reserve(READ_CHUNK_BYTES);
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buffer));
            match read.await {
                Err(_) => return Err(ReadEnd::Closed),
                Ok(Err(err)) => return Err(ReadEnd::Broken(err.to_string())),
                Ok(Ok(0)) => {
                    if self.buffer.is_empty() && !self.decoder.in_frame() {
                        return Err(ReadEnd::Closed);
                    }
                    return Err(ReadEnd::Broken("closed halfway through a request".into()));
                }
                Ok(Ok(read)) => self.metrics.resp_bytes(Direction::In, read),
            }
        }
    }

    /// Queues a reply; writes the queue once it is large.
    pub async fn push(&mut self, frame: &Frame, protocol: Protocol) -> std::io::Result<()> {
        frame.encode(protocol, &mut self.out);
        if self.out.len() >= WRITE_FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes every queued reply.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.out).await?;
        self.metrics.resp_bytes(Direction::Out, self.out.len());
        self.out.clear();
        Ok(())
    }

    /// Writes `frame` at once (an error before closing).
    pub async fn send_now(&mut self, frame: &Frame, protocol: Protocol) -> std::io::Result<()> {
        self.push(frame, protocol).await?;
        self.flush().await
    }
}
