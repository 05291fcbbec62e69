//! Peers that lie to a run: every kind of bad input is refused with its reason, never
//! applied, and the honest members go on and agree.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use odin_collab::run_topic;
use odin_collab::wire::TRAIN_PROTOCOL;
use odin_format::ModelId;
use odin_net::{peer_to_wire, Keypair, Net, NetConfig, NetEvent};
use odin_proto::train::{Announce, Commit, Gossip, Response, Update};
use odin_proto::{write_frame, Envelope, MAX_FRAME};

/// What a liar's stream server answers when asked for its update.
#[derive(Clone)]
enum Serve {
    /// A well-formed update, whatever was committed.
    Update(Update),
    /// These raw frame bytes.
    Raw(Vec<u8>),
    /// A frame header announcing more than the cap.
    Oversized,
}

struct Liar {
    net: Net,
    key: Keypair,
    events: tokio::sync::mpsc::Receiver<NetEvent>,
}

impl Liar {
    async fn start(run: ModelId, bootstrap: &[odin_net::Multiaddr], serve: Option<Serve>) -> Self {
        let key = Keypair::generate_ed25519();
        let mut cfg = NetConfig::loopback(run);
        cfg.bootstrap = bootstrap.to_vec();
        let (net, events) = Net::start(key.clone(), cfg).await.unwrap();
        net.subscribe(&run_topic(&run)).await.unwrap();
        if let Some(serve) = serve {
            let mut incoming = net.accept_for(TRAIN_PROTOCOL).unwrap();
            tokio::spawn(async move {
                while let Some((_, mut s)) = incoming.next().await {
                    let serve = serve.clone();
                    tokio::spawn(async move {
                        let _ = odin_proto::read_frame(&mut s, 4096).await;
                        let bytes = match serve {
                            Serve::Update(u) => Envelope { model: run, msg: Response::Update(u) }.to_bytes(),
                            Serve::Raw(b) => b,
                            Serve::Oversized => {
                                use futures::AsyncWriteExt;
                                let _ = s.write_all(&((MAX_FRAME + 1) as u32).to_le_bytes()).await;
                                let _ = s.flush().await;
                                return;
                            }
                        };
                        let _ = write_frame(&mut s, &bytes).await;
                        // Finish the stream: dropped unfinished, a QUIC stream is reset, and the
                        // reset can overtake the frame (the reader then sees an i/o error, not
                        // the bad bytes this liar is here to send).
                        use futures::AsyncWriteExt;
                        let _ = s.close().await;
                    });
                }
            });
        }
        Self { net, key, events }
    }

    fn me(&self) -> odin_proto::PeerBytes {
        peer_to_wire(&self.net.peer_id()).unwrap()
    }

    /// Publish; while no peer on the topic is known yet, wait for the next network event (a
    /// subscription) and try again.
    async fn publish(&mut self, run: ModelId, signed_for: ModelId, mut g: Gossip, good_sig: bool) {
        let sig = if good_sig { self.key.sign(&g.signing_bytes(&signed_for)).unwrap() } else { vec![0; 64] };
        g.set_sig(sig);
        let bytes = Envelope { model: signed_for, msg: g }.to_bytes();
        for _ in 0..50 {
            if self.net.publish_on(&run_topic(&run), bytes.clone()).await.is_ok() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.events.recv()).await;
        }
        panic!("a liar could not publish");
    }
}

#[test]
fn every_kind_of_bad_input_is_refused_with_its_reason_and_the_run_goes_on() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let run_toml =
        run_config(tmp.path(), "rounds = 3\ninner_steps = 2\nquorum = 2\ndeadline_ms = 4000\nvote_ms = 1500");
    const LIARS: usize = 6;
    let a = launch(Start::new(&run_toml, tmp.path().join("a"), 1 + LIARS));
    let mut sb = Start::new(&run_toml, tmp.path().join("b"), 1);
    sb.bootstrap = a.addrs.clone();
    let b = launch(sb);
    let run = a.run;
    let boot = a.addrs.clone();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outcome = rt.block_on(async move {
        let good = Update::quantize(10, None, &[0.5; 10]);
        let mut nan = good.clone();
        nan.scales[0] = 0x7e00; // an f16 NaN
        let mut nan_bytes = Envelope { model: run, msg: Response::Update(good.clone()) }.to_bytes();
        // The same message with the NaN scale, written by hand (the encoder would refuse it).
        let at = nan_bytes.len() - 10 - 2;
        nan_bytes[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
        let truncated = Envelope { model: run, msg: Response::Update(good.clone()) }.to_bytes();
        let truncated = truncated[..truncated.len() - 3].to_vec();
        let mut outsider = Liar::start(run, &boot, None).await;
        let mut mismatch = Liar::start(run, &boot, Some(Serve::Update(good.clone()))).await;
        let mut nan_liar = Liar::start(run, &boot, Some(Serve::Raw(nan_bytes))).await;
        let mut cut = Liar::start(run, &boot, Some(Serve::Raw(truncated))).await;
        let mut big = Liar::start(run, &boot, Some(Serve::Oversized)).await;
        let mut replayer = Liar::start(run, &boot, None).await;

        // Listen (as the outsider) for round 0's commitments and round 1's announcements.
        let mut old_hash = None;
        let mut state1 = None;
        while old_hash.is_none() || state1.is_none() {
            let Some(NetEvent::Gossip { data, .. }) = outsider.events.recv().await else { continue };
            match Envelope::<Gossip>::from_bytes(&data).map(|e| e.msg) {
                Ok(Gossip::Commit(c)) if c.round == 0 => old_hash = Some(c.update),
                Ok(Gossip::Announce(a)) if a.round == 1 => state1 = Some(a.state),
                _ => {}
            }
        }
        let (old_hash, state1) = (old_hash.unwrap(), state1.unwrap());
        let commit = |l: &Liar, round: u64, update: [u8; 32]| {
            Gossip::Commit(Commit { round, node: l.me(), base: state1, update, samples: 4, loss: 1.0, sig: vec![] })
        };
        let announce = |l: &Liar| Gossip::Announce(Announce { round: 1, node: l.me(), state: state1, sig: vec![] });

        // Not members (no announcement), or wrong in themselves.
        outsider.publish(run, ModelId([7; 32]), commit(&outsider, 1, [1; 32]), true).await;
        outsider.publish(run, run, commit(&outsider, 1, [2; 32]), false).await;
        outsider.publish(run, run, commit(&outsider, 0, [3; 32]), true).await;
        let mut other_base = commit(&outsider, 1, [4; 32]);
        if let Gossip::Commit(c) = &mut other_base {
            c.base = [5; 32];
        }
        outsider.publish(run, run, other_base, true).await;
        // Members of round 1 whose updates are bad.
        for (l, update) in [
            (&mut mismatch, [9; 32]),
            (&mut nan_liar, nan.hash()),
            (&mut cut, good.hash()),
            (&mut big, [8; 32]),
            (&mut replayer, old_hash),
        ] {
            let (a, c) = (announce(l), commit(l, 1, update));
            l.publish(run, run, a, true).await;
            l.publish(run, run, c, true).await;
        }
        // Keep the liars up (their swarms live in this runtime) until the honest members end.
        tokio::task::spawn_blocking(move || (a.finished(), b.finished())).await.unwrap()
    });
    let ((sa, ra), (sb, rb)) = outcome;
    assert_eq!(sa.state, sb.state, "the honest members disagree");
    for r in ra.iter().chain(&rb) {
        assert!(!r.skipped && r.accepted == 2, "a bad update counted: {r:?}");
    }
    let refused: Vec<&String> = ra.iter().flat_map(|r| &r.refused).collect();
    let expect = [
        "another run",
        "signature does not verify",
        "late: a commitment for round 0",
        "outside the run",
        "do not hash to the committed value",
        "non-finite scale",
        "bad answer",
        "over the cap",
        "replay of an update from an earlier round",
    ];
    for want in expect {
        assert!(refused.iter().any(|w| w.contains(want)), "nothing refused for {want:?}; refused: {refused:#?}");
    }
}
