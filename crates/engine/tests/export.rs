//! Exports: the GGUF file has llama.cpp's rwkv6 layout and carries our exact
//! Q8_0 blocks; the web-rwkv `.st` file has web-rwkv's names and shapes.
//! (llama.cpp itself loading the file and matching our tokens is checked by
//! `bench/llama_cpp_check.py`, which needs llama.cpp built from PyPI.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use odin_engine::{Options, Shard};

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny")
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn str(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    /// Skips a value; returns it as text for scalars and strings.
    fn value(&mut self, ty: u32) -> String {
        match ty {
            0 | 1 | 7 => self.take(1)[0].to_string(),
            4 => self.u32().to_string(),
            5 => (self.u32() as i32).to_string(),
            6 => f32::from_bits(self.u32()).to_string(),
            8 => self.str(),
            9 => {
                let (et, n) = (self.u32(), self.u64());
                (0..n).for_each(|_| {
                    self.value(et);
                });
                format!("[{n}]")
            }
            other => panic!("type {other}"),
        }
    }
}

#[test]
fn gguf_has_llama_cpp_rwkv6_layout_and_our_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    let shard = Shard::load(&bundled(), None, Options::default()).unwrap();
    odin_engine::export::write_gguf(&shard, &bundled().join("tokenizer.json"), &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let mut r = Reader { b: &bytes, at: 0 };
    assert_eq!(r.take(4), b"GGUF");
    assert_eq!(r.u32(), 3);
    let (nt, nk) = (r.u64(), r.u64());
    let mut kv = HashMap::new();
    for _ in 0..nk {
        let k = r.str();
        let ty = r.u32();
        kv.insert(k, r.value(ty));
    }
    assert_eq!(kv["general.architecture"], "rwkv6");
    assert_eq!(kv["rwkv6.rescale_every_n_layers"], "0");
    assert_eq!(kv["rwkv6.wkv.head_size"], "32");
    assert_eq!(kv["tokenizer.ggml.pre"], "starcoder");
    assert_eq!(kv["tokenizer.ggml.tokens"], "[1024]");
    let mut tensors = HashMap::new();
    for _ in 0..nt {
        let name = r.str();
        let nd = r.u32();
        let ne: Vec<u64> = (0..nd).map(|_| r.u64()).collect();
        let (ty, off) = (r.u32(), r.u64());
        tensors.insert(name, (ne, ty, off));
    }
    assert_eq!(tensors.len(), 3 + 4 * 24 + 3, "embedding + ln0, 24 per block, head");
    let data = r.at.next_multiple_of(32);
    let (ne, ty, off) = &tensors["blk.2.time_mix_key.weight"];
    assert_eq!((ne.as_slice(), *ty), (&[192u64, 192][..], 8));
    let (codes, scales) = shard.matrix("blocks.2.att.key.weight").unwrap().to_rows();
    let first = &bytes[data + *off as usize..data + *off as usize + 34];
    assert_eq!(half::f16::from_le_bytes([first[0], first[1]]).to_f32(), scales[0]);
    assert_eq!(first[2..].iter().map(|&b| b as i8).collect::<Vec<_>>(), codes[..32]);
    assert_eq!(tensors["blk.0.time_mix_w2.weight"].0, vec![16, 192, 5]);
    // The LoRA matrices go as the engine's own int8 blocks where Q8_0 allows (whole blocks
    // along ne0); odin-tiny's 16-wide time_mix_w2 goes as the same values in f32.
    let lora_types: Vec<(Vec<u64>, u32)> = ["time_mix_w1", "time_mix_w2", "time_mix_decay_w1", "time_mix_decay_w2"]
        .iter()
        .map(|n| {
            let (ne, ty, _) = &tensors[&format!("blk.1.{n}.weight")];
            (ne.clone(), *ty)
        })
        .collect();
    assert_eq!(lora_types, vec![(vec![192, 80], 8), (vec![16, 192, 5], 0), (vec![192, 32], 8), (vec![32, 192], 8)]);
    let (codes, scales) = shard.lora("blocks.1.att.time_maa_w1").unwrap()[0].to_rows();
    let off = tensors["blk.1.time_mix_w1.weight"].2 as usize;
    let first = &bytes[data + off..data + off + 34];
    assert_eq!(half::f16::from_le_bytes([first[0], first[1]]).to_f32(), scales[0]);
    assert_eq!(first[2..].iter().map(|&b| b as i8).collect::<Vec<_>>(), codes[..32]);
    assert_eq!(tensors["blk.0.time_mix_lerp_fused.weight"].0, vec![192, 1, 1, 5]);
}

#[test]
fn st_has_web_rwkv_names_and_f16() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.st");
    let shard = Shard::load(&bundled(), None, Options::default()).unwrap();
    odin_engine::export::write_st(&shard, &out).unwrap();
    let f = odin_engine::weights::TensorFile::open(&out).unwrap();
    let w1 = f.info("blocks.0.att.time_mix_w1").unwrap();
    assert_eq!((w1.dtype.as_str(), w1.shape.as_slice()), ("F16", &[80usize, 192][..]));
    assert_eq!(f.info("blocks.1.att.time_first").unwrap().shape, vec![6, 32]);
    assert_eq!(f.info("blocks.3.ffn.time_mix_k").unwrap().shape, vec![1, 1, 192]);
    assert!(f.info("blocks.0.att.time_maa_x").is_none());
    assert_eq!(f.metadata()["format"], "pt");
}
