//! The floor under a hop's overhead: round trips of a tiny shard-protocol request between two
//! nodes in one process (no compute, no cross-process scheduling), over TCP and over QUIC.
//!
//! `cargo run --release -p odin-node --example stream_rtt [MODEL_DIR] [ROUNDS]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use odin_node::{Node, NodeConfig};
use odin_proto::infer::Request;
use odin_proto::Envelope;
use odin_proto::{read_frame, write_frame, MAX_FRAME};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().map(PathBuf::from).unwrap_or_else(|| "models/odin-tiny".into());
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(3000).max(10);
    let tmp = std::env::temp_dir().join(format!("odin-stream-rtt-{}", std::process::id()));
    let mut cfg = NodeConfig::loopback(&model, Some(0..1), &tmp.join("server"));
    cfg.announce_every = Duration::from_secs(5);
    let server = Node::start(cfg).await?;
    for transport in ["/tcp/", "/quic-v1"] {
        let mut cfg = NodeConfig::loopback(&model, None, &tmp.join(format!("client{}", transport.len())));
        cfg.net.bootstrap = server.net().addrs().into_iter().filter(|a| a.to_string().contains(transport)).collect();
        let client = Node::start(cfg).await?;
        let mut s = client.net().open_stream(server.peer_id()).await?;
        // Closing an unknown session: the cheapest request there is (an error frame comes back).
        let req = Envelope { model: server.model(), msg: Request::Close { session: 1 } }.to_bytes();
        let mut t = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t0 = Instant::now();
            write_frame(&mut s, &req).await?;
            read_frame(&mut s, MAX_FRAME).await?;
            t.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        t.sort_by(f64::total_cmp);
        let q = |p: f64| t[((t.len() - 1) as f64 * p) as usize];
        println!(
            "{transport:9} round trip µs over {rounds}: p10 {:.0}  median {:.0}  p90 {:.0}",
            q(0.1),
            q(0.5),
            q(0.9)
        );
    }
    // The anchor: a bare TCP echo on loopback, no encryption, no multiplexing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Ok((mut c, _)) = listener.accept().await {
            let _ = c.set_nodelay(true);
            let mut b = [0u8; 64];
            while let Ok(n @ 1..) = c.read(&mut b).await {
                if c.write_all(&b[..n]).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    c.set_nodelay(true)?;
    let mut t = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let t0 = Instant::now();
        c.write_all(&[7u8; 48]).await?;
        let mut b = [0u8; 48];
        c.read_exact(&mut b).await?;
        t.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(f64::total_cmp);
    println!("bare tcp  round trip µs over {rounds}: median {:.0}", t[t.len() / 2]);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
