//! The public HTTP API against a real 4-node cluster: reads and writes
//! through different nodes, headers, conditional and range requests, and
//! every kind of bad input.

mod common;

use common::{Cluster, Options, bytes, key_url};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn values_written_anywhere_are_read_everywhere_and_deleted_everywhere() {
    let cluster = Cluster::start(Options {
        nodes: 4,
        ..Options::default()
    })
    .await;
    let http = &cluster.http;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("plain", b"hello".to_vec()),
        (
            "dir/sub dir/file name.txt",
            b"with slashes and spaces".to_vec(),
        ),
        ("ключ/鍵/🔑", "unicode value ✓".as_bytes().to_vec()),
        ("binary.bin", bytes(7, 70_000)),
        ("empty", Vec::new()),
        (
            "question?mark#hash%percent",
            b"reserved characters".to_vec(),
        ),
    ];
    for (key, value) in &cases {
        let reply = http
            .put(key_url(&cluster, 0, key))
            .body(value.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::CREATED, "PUT {key}");
        let body: Value = reply.json().await.unwrap();
        assert_eq!(body["key"], *key);
        assert!(body["timestamp"].as_u64().unwrap() > 1_600_000_000_000_000_000);
        assert_eq!(body["replicas"].as_array().unwrap().len(), 3);
        assert!(body["stored_on"].as_array().unwrap().len() >= 2);
        for node in 1..4 {
            let got = http.get(key_url(&cluster, node, key)).send().await.unwrap();
            assert_eq!(got.status(), StatusCode::OK, "GET {key} via node {node}");
            assert_eq!(
                got.bytes().await.unwrap().as_ref(),
                value.as_slice(),
                "{key} via {node}"
            );
        }
    }
    for (key, _) in &cases {
        let deleted = http.delete(key_url(&cluster, 2, key)).send().await.unwrap();
        assert_eq!(deleted.status(), StatusCode::OK);
        let body: Value = deleted.json().await.unwrap();
        assert_eq!(body["deleted"], true);
        for node in 0..4 {
            let got = http.get(key_url(&cluster, node, key)).send().await.unwrap();
            assert_eq!(
                got.status(),
                StatusCode::NOT_FOUND,
                "{key} via {node} after delete"
            );
            let body: Value = got.json().await.unwrap();
            assert_eq!(body["code"], "not_found");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_conditional_requests_and_ranges() {
    let cluster = Cluster::start(Options::default()).await;
    let http = &cluster.http;
    // Content type stored when given...
    http.put(key_url(&cluster, 0, "data"))
        .header("content-type", "application/x-custom")
        .body("0123456789")
        .send()
        .await
        .unwrap();
    let got = http.get(key_url(&cluster, 1, "data")).send().await.unwrap();
    assert_eq!(got.headers()["content-type"], "application/x-custom");
    let etag = got.headers()["etag"].to_str().unwrap().to_string();
    let last_modified = got.headers()["last-modified"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'));
    assert!(httpdate::parse_http_date(&last_modified).is_ok());
    // ...else guessed from the key's extension.
    http.put(key_url(&cluster, 0, "page.html"))
        .body("<p>hi</p>")
        .send()
        .await
        .unwrap();
    let got = http
        .get(key_url(&cluster, 2, "page.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["content-type"], "text/html");
    http.put(key_url(&cluster, 0, "noext"))
        .body("x")
        .send()
        .await
        .unwrap();
    let got = http
        .get(key_url(&cluster, 2, "noext"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["content-type"], "application/octet-stream");

    // HEAD: headers, no body.
    let head = http
        .head(key_url(&cluster, 2, "data"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "10");
    assert_eq!(head.headers()["etag"].to_str().unwrap(), etag);
    assert!(head.bytes().await.unwrap().is_empty());

    // 304 on a matching If-None-Match (any node), 200 on another tag.
    for node in 0..3 {
        let cached = http
            .get(key_url(&cluster, node, "data"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    }
    let changed = http
        .get(key_url(&cluster, 0, "data"))
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let since = http
        .get(key_url(&cluster, 0, "data"))
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(since.status(), StatusCode::NOT_MODIFIED);

    // 206 on Range, 416 past the end.
    let part = http
        .get(key_url(&cluster, 1, "data"))
        .header("range", "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 2-5/10");
    assert_eq!(part.bytes().await.unwrap().as_ref(), b"2345");
    let tail = http
        .get(key_url(&cluster, 1, "data"))
        .header("range", "bytes=-3")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.bytes().await.unwrap().as_ref(), b"789");
    let past = http
        .get(key_url(&cluster, 1, "data"))
        .header("range", "bytes=50-")
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // A range of a chunked (large) value, read through a node that streams it.
    let big = bytes(3, 3 * 1024 * 1024 + 17);
    http.put(key_url(&cluster, 0, "big"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let start = 1024 * 1024 - 5;
    let part = http
        .get(key_url(&cluster, 2, "big"))
        .header(
            "range",
            format!("bytes={start}-{}", start + 2 * 1024 * 1024),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.bytes().await.unwrap().as_ref(),
        &big[start..=start + 2 * 1024 * 1024]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn haskey_whereis_ring_and_key_listing() {
    let cluster = Cluster::start(Options::default()).await;
    let http = &cluster.http;
    assert_eq!(cluster.haskey(0, "absent").await, (0, false));
    let put: Value = http
        .put(format!("{}?w=all", key_url(&cluster, 0, "k/1")))
        .body("v")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let timestamp = put["timestamp"].as_u64().unwrap();
    let replicas: Vec<String> = serde_json::from_value(put["replicas"].clone()).unwrap();
    let whereis: Vec<String> = http
        .get(format!("{}/whereis/k/1", cluster.url(1)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whereis, replicas);
    for node in &whereis {
        assert_eq!(
            cluster.haskey(cluster.index_of(node), "k/1").await,
            (timestamp, false)
        );
    }
    let ring = cluster.ring(2).await.unwrap();
    assert_eq!(ring["replicas"], 3);
    assert_eq!(ring["nodes"].as_array().unwrap().len(), 3);
    for key in ["k/2", "k/3", "other"] {
        http.put(key_url(&cluster, 0, key))
            .body("v")
            .query(&[("w", "all")])
            .send()
            .await
            .unwrap();
    }
    let page: Value = http
        .get(format!("{}/keys?prefix=k/&limit=2", cluster.url(0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: Vec<&str> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["k/1", "k/2"]);
    assert_eq!(page["next"], "k/2");
    let rest: Value = http
        .get(format!(
            "{}/keys?prefix=k/&limit=2&after=k/2",
            cluster.url(0)
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["keys"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn favicon_and_status_page() {
    let cluster = Cluster::start(Options::default()).await;
    let http = &cluster.http;
    let missing = http
        .get(format!("{}/favicon.ico", cluster.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let icon = bytes(9, 1500);
    let put = http
        .put(key_url(&cluster, 1, "favicon.ico"))
        .body(icon.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let got = http
        .get(format!("{}/favicon.ico", cluster.url(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["content-type"], "image/x-icon");
    assert_eq!(got.bytes().await.unwrap().as_ref(), icon.as_slice());

    // The page lists the members with links, and escapes key names.
    http.put(format!(
        "{}?w=all",
        key_url(&cluster, 0, "<script>alert('x')</script>")
    ))
    .body("v")
    .send()
    .await
    .unwrap();
    let page = http.get(cluster.url(0)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    for node in &cluster.nodes {
        assert!(
            html.contains(&format!("href=\"http://{}/\"", node.id)),
            "{html}"
        );
    }
    assert!(html.contains("&lt;script&gt;"));
    assert!(!html.contains("<script>alert"));
    // The favicon key, now present, is the page's icon.
    assert!(html.contains(r#"<link rel="icon" href="/favicon.ico">"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn state_changing_requests_from_other_origins_are_refused() {
    let cluster = Cluster::start(Options::default()).await;
    let http = &cluster.http;
    let me = &cluster.nodes[0].id;
    let other = &cluster.nodes[1].id;
    // A browser on another site, or on another node's page.
    for (header, value) in [
        ("Origin", "http://evil.example".to_string()),
        ("Origin", format!("http://{other}")),
        ("Origin", "null".to_string()),
        ("Sec-Fetch-Site", "cross-site".to_string()),
        ("Sec-Fetch-Site", "same-site".to_string()),
    ] {
        let put = http
            .put(key_url(&cluster, 0, "forged"))
            .header(header, &value)
            .body("x")
            .send()
            .await
            .unwrap();
        let body = assert_json_error(put, StatusCode::FORBIDDEN).await;
        assert_eq!(body["code"], "cross_origin", "{header}: {value}");
        for (method, path) in [
            (reqwest::Method::POST, "/balance"),
            (reqwest::Method::POST, "/purge"),
            (reqwest::Method::DELETE, "/keys/existing"),
        ] {
            let response = http
                .request(method, format!("{}{path}", cluster.url(0)))
                .header(header, &value)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path} {value}");
        }
        // Reading is not refused.
        let page = http
            .get(cluster.url(0))
            .header(header, &value)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
    }
    let haskey = cluster.haskey(0, "forged").await;
    assert_eq!(haskey.0, 0, "a refused write was stored");
    // This node's own page, and clients that are not browsers, pass.
    let own = http
        .put(key_url(&cluster, 0, "forged"))
        .header("Origin", format!("http://{me}"))
        .header("Sec-Fetch-Site", "same-origin")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::CREATED);
    let plain = http
        .post(format!("{}/balance", cluster.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::OK);
}

async fn assert_json_error(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "error bodies are JSON"
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let cluster = Cluster::start(Options {
        flags: vec!["--max-value-size".into(), "4MiB".into()],
        ..Options::default()
    })
    .await;
    let http = &cluster.http;
    let base = cluster.url(0);
    // Keys: empty, over-long, not UTF-8; bad quorums; unknown route, wrong
    // method, not yet implemented.
    let long = "k".repeat(1025);
    let cases: Vec<(reqwest::Method, String, StatusCode)> = vec![
        (
            reqwest::Method::PUT,
            "/keys/".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::PUT,
            format!("/keys/{long}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::GET,
            "/keys/%ff%fe".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::GET,
            "/haskey/%c3".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::PUT,
            "/keys/q?w=7".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::GET,
            "/keys/q?r=zero".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::GET,
            "/nothing/here".into(),
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::POST,
            "/keys/x".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, path, status) in cases {
        let response = http
            .request(method.clone(), format!("{base}{path}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        assert_json_error(response, status).await;
    }
    let longest = http
        .put(format!("{base}/keys/{}", "k".repeat(1024)))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(longest.status(), StatusCode::CREATED);

    // Over the limit with a declared length: 413 before the body is read.
    // The body never ends, so only an early answer can pass this.
    // A client of their own: the node closes these connections.
    let oneshot = ringkv::tls::http_client();
    let endless = futures::stream::repeat_with(|| {
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 65536]))
    });
    let response = oneshot
        .put(format!("{base}/keys/huge"))
        .header("content-length", (10u64 << 30).to_string())
        .body(reqwest::Body::wrap_stream(endless))
        .send()
        .await;
    match response {
        Ok(r) => {
            assert_json_error(r, StatusCode::PAYLOAD_TOO_LARGE).await;
        }
        // The server may close the connection while we still send; what
        // matters is that nothing was stored and the node is up.
        Err(err) => eprintln!("upload cut off by the server: {err}"),
    }
    // Over the limit with a chunked upload: 413 once the limit is passed.
    let chunked = futures::stream::iter(
        (0..80).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 65536]))),
    );
    let response = ringkv::tls::http_client()
        .put(format!("{base}/keys/huge"))
        .body(reqwest::Body::wrap_stream(chunked))
        .send()
        .await
        .unwrap();
    assert_json_error(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    for node in 0..3 {
        assert_eq!(cluster.haskey(node, "huge").await, (0, false));
    }

    // A client that vanishes mid-upload leaves no partial value.
    {
        use tokio::io::AsyncWriteExt;
        let mut socket = tokio::net::TcpStream::connect(&cluster.nodes[1].id)
            .await
            .unwrap();
        let head = "PUT /keys/partial HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&vec![7u8; 1_500_000]).await.unwrap();
        socket.flush().await.unwrap();
        drop(socket);
    }
    // The node notices the broken upload; every replica must end with nothing.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(2) {
        for node in 0..3 {
            assert_eq!(cluster.haskey(node, "partial").await, (0, false));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let got = http
        .get(format!("{base}/keys/partial"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::NOT_FOUND);

    // Malformed HTTP: the node answers 400 and stays up.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(&cluster.nodes[0].id)
            .await
            .unwrap();
        socket
            .write_all(b"\x00\x01GARBAGE / HTTP/9\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer).await;
        assert!(answer.is_empty() || String::from_utf8_lossy(&answer).contains("400"));
    }

    // A malformed RPC message gets an error reply; the node stays up.
    let h2 = ringkv::tls::http_client_builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let reply = h2
        .post(format!("{base}/ringkv.v1.Replica/Write"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![
            0u8, 0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ])
        .send()
        .await
        .unwrap();
    let status = reply
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    let message = reply
        .headers()
        .get("grpc-message")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        matches!(status.as_deref(), Some(s) if s != "0"),
        "expected a gRPC error, got status {status:?} message {message:?}"
    );
    // A truncated frame (declared 100 bytes, sent 3).
    let _ = h2
        .post(format!("{base}/ringkv.v1.Replica/Read"))
        .header("content-type", "application/grpc")
        .body(vec![0u8, 0, 0, 0, 100, 1, 2, 3])
        .send()
        .await;
    cluster.wait_ready(0).await;
    let put = http
        .put(format!("{base}/keys/after-garbage"))
        .body("fine")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
}

/// A client (or a peer whose calls passed their deadline) that cancels many
/// HTTP/2 streams before the node took them up keeps its connection: the
/// node does not answer GOAWAY after 20, which failed every other call in
/// flight on that connection.
#[tokio::test(flavor = "multi_thread")]
async fn streams_cancelled_in_a_burst_do_not_close_the_connection() {
    let cluster = Cluster::start(Options {
        nodes: 1,
        ..Options::default()
    })
    .await;
    let addr = cluster.nodes[0].id.clone();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = || {
        http::Request::get(format!("http://{addr}/ring"))
            .body(())
            .unwrap()
    };
    for _ in 0..3 {
        // Sent and dropped in one go: each stream is reset (CANCEL) right
        // behind its headers, before the node accepts it.
        for _ in 0..200 {
            client = client
                .ready()
                .await
                .expect("the connection still takes streams");
            let (answer, _) = client.send_request(request(), true).unwrap();
            drop(answer);
        }
        client = client
            .ready()
            .await
            .expect("the connection still takes streams");
        let (answer, _) = client.send_request(request(), true).unwrap();
        let answer = tokio::time::timeout(common::DEADLINE, answer)
            .await
            .expect("an answer in time")
            .expect("the connection still serves requests");
        assert_eq!(answer.status(), StatusCode::OK);
    }
    assert!(!driver.is_finished(), "the connection ended");
}
