//! The backward relay: three nodes holding blocks [0,2), [2,3) and [3,4) train a model none of
//! them holds whole, and reach the weights one machine reaches on the same batches.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use odin_collab::plan::Group;
use odin_collab::relay::{chain_id, serve_stage, Driver};
use odin_collab::stage::Stage;
use odin_net::{Keypair, Net, NetConfig};
use odin_proto::Dtype;
use odin_train::{TrainConfig, Trainer};

fn config(dir: &std::path::Path) -> TrainConfig {
    common::run_config(dir, "");
    // Four blocks, so the chain can split them 2 + 1 + 1.
    let model =
        std::fs::read_to_string(dir.join("model.json")).unwrap().replace("\"num_layers\":2", "\"num_layers\":4");
    std::fs::write(dir.join("model.json"), model).unwrap();
    TrainConfig::load(&dir.join("train.toml")).unwrap()
}

#[test]
fn three_stages_reach_the_weights_of_one_machine_on_the_same_batches() {
    common::logs();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    const STEPS: u64 = 4;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (stage_weights, relay_secs, relay_tokens, losses) = rt.block_on(async {
        let id = chain_id(&cfg).unwrap();
        let mut peers = Vec::new();
        let mut nets = Vec::new();
        let mut first_addrs = Vec::new();
        let mut stages = Vec::new();
        let mut handles = Vec::new();
        for range in [0..2, 2..3, 3..4] {
            let stage = Arc::new(Mutex::new(Stage::new(&cfg, range, Dtype::F32).unwrap()));
            handles.push(stage.clone());
            let mut nc = NetConfig::loopback(id);
            nc.bootstrap = first_addrs.clone();
            let (net, _events) = Net::start(Keypair::generate_ed25519(), nc).await.unwrap();
            if first_addrs.is_empty() {
                first_addrs = net.addrs();
            }
            peers.push(net.peer_id());
            stages.push(tokio::spawn(serve_stage(net.clone(), id, stage)));
            nets.push((net, _events));
        }
        let mut nc = NetConfig::loopback(id);
        nc.bootstrap = first_addrs.clone();
        let (client, _ev) = Net::start(Keypair::generate_ed25519(), nc).await.unwrap();
        for (n, _) in &nets {
            for a in n.addrs() {
                client.dial(a).await.unwrap();
            }
        }
        let chain: Vec<Group> =
            [0..2, 2..3, 3..4].into_iter().zip(&peers).map(|(range, p)| Group { range, replicas: vec![*p] }).collect();
        let mut d = Driver::connect(&client, cfg.clone(), &chain).await.unwrap();
        let t0 = Instant::now();
        let mut tokens = 0;
        let mut losses = Vec::new();
        for _ in 0..STEPS {
            let s = d.step().await.unwrap();
            tokens += s.tokens;
            losses.push(s.loss);
        }
        let secs = t0.elapsed().as_secs_f64();
        drop(d);
        for s in stages {
            s.abort();
        }
        let weights: Vec<_> = handles.iter().map(|h| h.lock().unwrap().weights()).collect();
        (weights, secs, tokens, losses)
    });
    let mut t = Trainer::new(cfg).unwrap();
    let t0 = Instant::now();
    let mut one = Vec::new();
    for _ in 0..STEPS {
        one.push(t.train_step().unwrap().loss);
    }
    let one_secs = t0.elapsed().as_secs_f64();
    for (a, b) in losses.iter().zip(&one) {
        assert!((a - b).abs() < 1e-5, "losses differ: relay {losses:?}, one machine {one:?}");
    }
    // Every parameter of the model is on exactly one stage, within 1e-5 of one machine's.
    let whole = t.weights();
    let mut seen = 0;
    let mut worst = 0f32;
    for w in &stage_weights {
        for (name, got) in w {
            let want = whole.iter().find(|(n, _)| *n == name).map(|(_, t)| t.clone()).unwrap();
            let diff = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            worst = worst.max(diff);
            seen += 1;
        }
    }
    assert_eq!(seen, whole.len(), "the stages do not hold every parameter exactly once");
    assert!(worst <= 1e-5, "a weight differs from one machine's by {worst}");
    // And the training moved them: the relay is not comparing two untouched models.
    let start =
        Stage::new(&TrainConfig::load(&tmp.path().join("train.toml")).unwrap(), 0..2, Dtype::F32).unwrap().weights();
    let moved = start.iter().any(|(n, t0)| {
        let now = &stage_weights[0][n];
        (now - t0).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() > 1e-4
    });
    assert!(moved, "training did not move the first stage's weights");
    eprintln!(
        "worst weight difference {worst:e}; relay: {:.0} tokens/s; one machine: {:.0} tokens/s",
        relay_tokens as f64 / relay_secs,
        relay_tokens as f64 / one_secs
    );
}
