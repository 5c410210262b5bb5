//! The data store's HTTP/JSON API (`--listen-http-url`) against a real
//! node: put, get, delete, scan, batch get and put, the shard map, and bad
//! input answered with JSON errors and stable codes. The requests are plain
//! HTTP/1.1 over a TCP socket, as `curl` sends them.
//!
//! `ZONGHENG_PROCESS_TESTS=0` turns it off.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{free_port, wait_for, zongheng_enabled, Cluster, Kind, Options};

/// One request; returns the status code and the body as JSON.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let (_, body) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
    // Bodies come whole or chunked; a JSON body is one chunk here.
    let json_text = if text.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body.lines().nth(1).unwrap_or("null").to_string()
    } else {
        body.to_string()
    };
    let json = serde_json::from_str(json_text.trim()).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[test]
fn the_http_api_reads_writes_and_refuses_bad_input() {
    if !zongheng_enabled() {
        return;
    }
    let port = free_port();
    let options = Options {
        size: 1,
        extra_args: vec![
            "--store-partitions".into(),
            "4".into(),
            "--listen-http-url".into(),
            format!("http://127.0.0.1:{port}"),
        ],
        ..Options::default()
    };
    let _cluster = Cluster::start_with(Kind::Zongheng, options);

    // The store may still be electing its partition leaders.
    wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        let (status, _) = http(port, "PUT", "/v1/store/keys/user/1", b"alice");
        (status == 200).then_some(())
    })
    .expect("a put succeeds");
    let (status, value) = http(port, "GET", "/v1/store/keys/user/1", b"");
    assert_eq!((status, value["value"].as_str()), (200, Some("alice")), "{value}");
    let (status, value) = http(port, "GET", "/v1/store/keys/user/1?consistency=f", b"");
    assert_eq!((status, value["value"].as_str()), (200, Some("alice")), "{value}");

    let (status, answer) = http(
        port,
        "POST",
        "/v1/store/batch-put",
        br#"{"pairs": {"user/2": "bob", "user/3": "carol", "other": "x"}}"#,
    );
    assert_eq!((status, answer["keys"].as_u64()), (200, Some(3)), "{answer}");
    let (status, answer) = http(
        port,
        "POST",
        "/v1/store/batch-get",
        br#"{"keys": ["user/3", "missing", "user/1"]}"#,
    );
    assert_eq!(status, 200);
    let values: Vec<Option<&str>> = answer["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value["value"].as_str())
        .collect();
    assert_eq!(values, [Some("carol"), None, Some("alice")]);

    let (status, answer) = http(port, "GET", "/v1/store/scan?prefix=user/&limit=2", b"");
    assert_eq!((status, answer["count"].as_u64()), (200, Some(2)), "{answer}");
    assert_eq!(answer["rows"][0]["key"], "user/1");
    assert_eq!(answer["rows"][1]["key"], "user/2");

    let (status, _) = http(port, "DELETE", "/v1/store/keys/user/2", b"");
    assert_eq!(status, 200);
    let (status, error) = http(port, "GET", "/v1/store/keys/user/2", b"");
    assert_eq!((status, error["code"].as_str()), (404, Some("ZH_STORE_KEY_NOT_FOUND")));

    let (status, map) = http(port, "GET", "/v1/store/shard-map", b"");
    assert_eq!(status, 200);
    assert_eq!(map["partitions"].as_array().unwrap().len(), 4, "{map}");

    // Bad input: clear errors with stable codes, nothing changed.
    let (status, error) = http(port, "GET", "/v1/store/scan?start=b&end=a", b"");
    assert_eq!((status, error["code"].as_str()), (400, Some("ZH_STORE_INVERTED_RANGE")));
    let (status, error) = http(port, "GET", "/v1/store/keys/user/1?consistency=x", b"");
    assert_eq!((status, error["code"].as_str()), (400, Some("ZH_STORE_BAD_REQUEST")));
    let too_many: serde_json::Map<String, serde_json::Value> =
        (0..10_001).map(|index| (format!("big/{index}"), "x".into())).collect();
    let body = serde_json::to_vec(&serde_json::json!({ "pairs": too_many })).unwrap();
    let (status, error) = http(port, "POST", "/v1/store/batch-put", &body);
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("ZH_STORE_BATCH_TOO_LARGE"))
    );
    let (status, answer) = http(port, "GET", "/v1/store/scan?prefix=big/", b"");
    assert_eq!((status, answer["count"].as_u64()), (200, Some(0)));
    let (status, _) = http(port, "POST", "/v1/store/batch-get", b"{not json");
    assert!((400..500).contains(&status), "{status}");
}
