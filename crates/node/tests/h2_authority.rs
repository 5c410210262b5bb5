//! End to end: a real tonic server whose accepted connections are (or are not)
//! wrapped in `AuthorityFixer`, and clients that send the malformed
//! `:authority` etcd's Go clients send. The raw client writes HTTP/2 frames
//! itself, because h2's own client can only send an authority that parses.

mod h2_authority {
    use std::net::SocketAddr;
    use std::time::Duration;

    use futures::StreamExt;
    use httlib_hpack::{Decoder, Encoder};
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};
    use zongheng::net::h2_authority::AuthorityFixer;
    use zongheng::net::serve::ServeOptions;
    use zongheng::net::transport::{BoxedConnection, Listener};
    use zongheng_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
    use zongheng_proto::etcdserverpb::*;

    const VERSION: &str = "3.5.99";
    const STATUS_PATH: &str = "/etcdserverpb.Maintenance/Status";
    const HASH_PATH: &str = "/etcdserverpb.Maintenance/Hash";
    const PROTOCOL_ERROR: u32 = 0x1;
    const GRPC_UNIMPLEMENTED: &str = "12";
    /// How long any one exchange with the server may take.
    const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Maintenance with only Status: the call `etcdctl endpoint status` makes.
    struct StatusOnly;

    #[tonic::async_trait]
    impl Maintenance for StatusOnly {
        async fn alarm(&self, _: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
            Err(Status::unimplemented("Alarm"))
        }

        async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
            Ok(Response::new(StatusResponse {
                header: Some(ResponseHeader {
                    cluster_id: 1,
                    member_id: 2,
                    revision: 3,
                    raft_term: 4,
                }),
                version: VERSION.to_string(),
                db_size: 4096,
                leader: 2,
                raft_index: 10,
                raft_term: 4,
                raft_applied_index: 10,
                db_size_in_use: 4096,
                ..Default::default()
            }))
        }

        async fn defragment(&self, _: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
            Err(Status::unimplemented("Defragment"))
        }

        async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
            Err(Status::unimplemented("Hash"))
        }

        async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
            Err(Status::unimplemented("HashKV"))
        }

        type SnapshotStream = futures::stream::Empty<Result<SnapshotResponse, Status>>;

        async fn snapshot(&self, _: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
            Err(Status::unimplemented("Snapshot"))
        }

        async fn move_leader(&self, _: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
            Err(Status::unimplemented("MoveLeader"))
        }

        async fn downgrade(&self, _: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
            Err(Status::unimplemented("Downgrade"))
        }
    }

    /// Starts the node's gRPC server (`net::serve`) on a free port; `fix`
    /// wraps accepted connections.
    async fn serve(fix: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let incoming: Listener = Box::pin(TcpListenerStream::new(listener).map(move |accepted| {
            accepted.map(|stream| {
                if fix {
                    BoxedConnection(Box::new(AuthorityFixer::new(stream)))
                } else {
                    BoxedConnection(Box::new(stream))
                }
            })
        }));
        let routes = tonic::service::Routes::new(MaintenanceServer::new(StatusOnly));
        tokio::spawn(zongheng::net::serve::serve(
            routes,
            incoming,
            ServeOptions::default(),
            std::future::pending(),
        ));
        address
    }

    #[derive(Debug, PartialEq)]
    enum Outcome {
        /// The server reset the stream with this error code.
        Reset(u32),
        /// The server closed the connection with this error code.
        GoAway(u32),
        Answered {
            http_status: String,
            grpc_status: String,
            message: Vec<u8>,
        },
    }

    /// An HTTP/2 client that writes its own frames, so it can send any
    /// `:authority`. It encodes like Go's client: Huffman strings, fields added
    /// to the dynamic table, later requests referencing them.
    struct RawClient {
        stream: TcpStream,
        encoder: Encoder<'static>,
        decoder: Decoder<'static>,
        next_stream_id: u32,
    }

    impl RawClient {
        async fn connect(address: SocketAddr) -> Self {
            let mut stream = TcpStream::connect(address).await.unwrap();
            let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            start.extend(frame(0x4, 0, 0, &[])); // SETTINGS
            stream.write_all(&start).await.unwrap();
            RawClient {
                stream,
                encoder: Encoder::default(),
                decoder: Decoder::default(),
                next_stream_id: 1,
            }
        }

        /// One unary gRPC call with an empty request message.
        async fn unary(&mut self, authority: &str, path: &str) -> Outcome {
            let stream_id = self.next_stream_id;
            self.next_stream_id += 2;
            let fields = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", authority),
                ("content-type", "application/grpc"),
                ("user-agent", "grpc-go/1.26.0"),
                ("te", "trailers"),
            ];
            let flags = Encoder::HUFFMAN_NAME | Encoder::HUFFMAN_VALUE | Encoder::WITH_INDEXING | Encoder::BEST_FORMAT;
            let mut block = Vec::new();
            for (name, value) in fields {
                let field = (name.as_bytes().to_vec(), value.as_bytes().to_vec(), flags);
                self.encoder.encode(field, &mut block).unwrap();
            }
            let mut request = frame(0x1, 0x4, stream_id, &block); // HEADERS, END_HEADERS
            request.extend(frame(0x0, 0x1, stream_id, &[0, 0, 0, 0, 0])); // DATA, END_STREAM
            self.stream.write_all(&request).await.unwrap();
            tokio::time::timeout(EXCHANGE_TIMEOUT, self.outcome(stream_id))
                .await
                .expect("the server answers")
        }

        async fn outcome(&mut self, stream_id: u32) -> Outcome {
            let mut fields: Vec<(String, String)> = Vec::new();
            let mut message = Vec::new();
            loop {
                let (kind, flags, id, payload) = self.read_frame().await;
                match kind {
                    0x4 if flags & 0x1 == 0 => self.stream.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(),
                    0x7 => return Outcome::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
                    0x3 if id == stream_id => {
                        return Outcome::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()))
                    }
                    0x1 => {
                        assert_ne!(flags & 0x4, 0, "the server's headers fit one frame");
                        // Every block goes through the decoder: they share its table.
                        let mut decoded = Vec::new();
                        self.decoder.decode(&mut payload.clone(), &mut decoded).unwrap();
                        if id == stream_id {
                            for (name, value, _) in decoded {
                                fields.push((String::from_utf8(name).unwrap(), String::from_utf8(value).unwrap()));
                            }
                        }
                    }
                    0x0 if id == stream_id => message.extend_from_slice(&payload),
                    _ => {}
                }
                if id == stream_id && flags & 0x1 != 0 && (kind == 0x0 || kind == 0x1) {
                    let get = |name: &str| {
                        fields
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    return Outcome::Answered {
                        http_status: get(":status"),
                        grpc_status: get("grpc-status"),
                        message,
                    };
                }
            }
        }

        async fn read_frame(&mut self) -> (u8, u8, u32, Vec<u8>) {
            let mut head = [0u8; 9];
            self.stream.read_exact(&mut head).await.unwrap();
            let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let id = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
            let mut payload = vec![0; length];
            self.stream.read_exact(&mut payload).await.unwrap();
            (head[3], head[4], id, payload)
        }
    }

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len();
        let mut out = vec![(length >> 16) as u8, (length >> 8) as u8, length as u8, kind, flags];
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn status_response(outcome: Outcome) -> StatusResponse {
        let Outcome::Answered {
            http_status,
            grpc_status,
            message,
        } = outcome
        else {
            panic!("expected an answer, got {outcome:?}");
        };
        assert_eq!((http_status.as_str(), grpc_status.as_str()), ("200", "0"));
        assert_eq!(message[0], 0, "uncompressed gRPC message");
        StatusResponse::decode(&message[5..]).unwrap()
    }

    #[tokio::test]
    async fn h2_resets_a_scheme_in_the_authority_without_the_fixer() {
        let address = serve(false).await;
        let mut client = RawClient::connect(address).await;
        let authority = format!("http://{address}");
        assert_eq!(
            client.unary(&authority, STATUS_PATH).await,
            Outcome::Reset(PROTOCOL_ERROR)
        );
    }

    #[tokio::test]
    async fn the_fixer_serves_a_scheme_in_the_authority() {
        let address = serve(true).await;
        let mut client = RawClient::connect(address).await;
        let authority = format!("http://{address}");
        // Several calls on one connection: later blocks reference the dynamic
        // table the first one filled.
        for _ in 0..3 {
            assert_eq!(
                status_response(client.unary(&authority, STATUS_PATH).await).version,
                VERSION
            );
        }
        let Outcome::Answered { grpc_status, .. } = client.unary(&authority, HASH_PATH).await else {
            panic!("Hash is answered");
        };
        assert_eq!(grpc_status, GRPC_UNIMPLEMENTED);
    }

    /// Once a connection is rewritten, a block the mirror cannot decode must
    /// end the connection rather than reach h2 raw.
    #[tokio::test]
    async fn the_fixer_closes_a_rewritten_connection_on_bad_hpack() {
        let address = serve(true).await;
        let mut client = RawClient::connect(address).await;
        let authority = format!("http://{address}");
        assert_eq!(
            status_response(client.unary(&authority, STATUS_PATH).await).version,
            VERSION
        );
        // An index past the end of the dynamic table.
        client
            .stream
            .write_all(&frame(0x1, 0x4 | 0x1, 3, &[0x80 | 120]))
            .await
            .unwrap();
        let outcome = tokio::time::timeout(EXCHANGE_TIMEOUT, client.outcome(3)).await.unwrap();
        assert_eq!(outcome, Outcome::GoAway(PROTOCOL_ERROR));
    }

    #[tokio::test]
    async fn the_fixer_serves_an_etcd_35_endpoint_list() {
        let address = serve(true).await;
        let mut client = RawClient::connect(address).await;
        let authority = format!("#initially=[http://{address};http://10.0.0.2:2379]");
        assert_eq!(
            status_response(client.unary(&authority, STATUS_PATH).await).version,
            VERSION
        );
        assert_eq!(
            status_response(client.unary(&authority, STATUS_PATH).await).version,
            VERSION
        );
    }

    #[tokio::test]
    async fn the_fixer_passes_a_valid_authority_through() {
        let address = serve(true).await;
        let mut client = RawClient::connect(address).await;
        for _ in 0..2 {
            let outcome = client.unary(&address.to_string(), STATUS_PATH).await;
            assert_eq!(status_response(outcome).version, VERSION);
        }
    }

    /// The real client, when installed (Debian's etcd-client). Skipped, with a
    /// note on stderr, where it is not.
    #[tokio::test]
    async fn etcdctl_endpoint_status_with_a_url_endpoint() {
        const ETCDCTL: &str = "/usr/bin/etcdctl";
        if !std::path::Path::new(ETCDCTL).exists() {
            eprintln!("skipped: {ETCDCTL} is not installed");
            return;
        }
        async fn endpoint_status(address: SocketAddr) -> std::process::Output {
            tokio::process::Command::new(ETCDCTL)
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &format!("http://{address}")])
                .args([
                    "--dial-timeout=3s",
                    "--command-timeout=3s",
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                ])
                .output()
                .await
                .unwrap()
        }
        let fixed = endpoint_status(serve(true).await).await;
        let stdout = String::from_utf8_lossy(&fixed.stdout);
        assert!(
            fixed.status.success() && stdout.contains(VERSION),
            "etcdctl through the fixer: {}\n{stdout}\n{}",
            fixed.status,
            String::from_utf8_lossy(&fixed.stderr)
        );
        // The premise: without the fixer this very command fails.
        let unfixed = endpoint_status(serve(false).await).await;
        let stderr = String::from_utf8_lossy(&unfixed.stderr);
        assert!(
            !unfixed.status.success() && stderr.contains("PROTOCOL_ERROR"),
            "etcdctl without the fixer did not fail as expected (does it still send a scheme \
             in :authority?): {}\n{stderr}",
            unfixed.status
        );
    }
}
