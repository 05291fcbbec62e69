//! Runs generated Python in CPython subprocesses with time and memory limits.
//!
//! Each process runs a small harness that lowers its own rlimits (address
//! space, CPU, file size), replaces `__builtins__` with a whitelist (no
//! `import`, `open`, `eval`), and gives every job a 200 ms timer. Many jobs
//! share one process for speed; a watchdog kills a process that overruns.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

const HARNESS: &str = r#"
import sys, json, resource, signal
for lim, val in ((resource.RLIMIT_AS, 1 << 30), (resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_CPU, 300)):
    try:
        resource.setrlimit(lim, (val, val))
    except (ValueError, OSError):
        pass
B = __builtins__ if isinstance(__builtins__, dict) else __builtins__.__dict__
SAFE = {k: B[k] for k in ("abs", "all", "any", "bool", "dict", "enumerate", "int", "len", "list", "max", "min",
        "range", "reversed", "sorted", "str", "sum", "tuple", "zip", "None", "True", "False", "ValueError",
        "isinstance", "divmod", "repr") if k in B}
class Timeout(BaseException):
    pass
def alarm(signum, frame):
    raise Timeout()
signal.signal(signal.SIGALRM, alarm)
out = sys.stdout
for line in sys.stdin:
    job = json.loads(line)
    res = None
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        g = {"__builtins__": SAFE}
        exec(compile(job["code"], "<generated>", "exec"), g)
        res = []
        for call in job["calls"]:
            try:
                r = repr(eval(call, g))
                res.append(r if len(r) <= 300 else None)
            except Timeout:
                raise
            except Exception:
                res.append(None)
    except BaseException:
        res = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    out.write(json.dumps({"id": job["id"], "results": res}) + "\n")
out.flush()
"#;

/// One unit of work: define `code`, then evaluate each expression in `calls`.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Caller's index, echoed back.
    pub id: usize,
    /// Python source defining `f`.
    pub code: String,
    /// Expressions to evaluate after `code` runs.
    pub calls: Vec<String>,
}

#[derive(Deserialize)]
struct Reply {
    id: usize,
    results: Option<Vec<Option<String>>>,
}

/// A located CPython interpreter.
#[derive(Debug, Clone)]
pub struct Sandbox {
    python: String,
    batch: usize,
}

impl Sandbox {
    /// Find `python3` on PATH; `None` when it is missing or not CPython 3.
    pub fn detect() -> Option<Self> {
        let out = Command::new("python3")
            .args(["-I", "-S", "-c", "import sys; print(sys.implementation.name, sys.version_info[0])"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        (out.status.success() && text.trim() == "cpython 3").then(|| Self { python: "python3".into(), batch: 2000 })
    }

    /// Run `jobs`; for each job, `None` if it failed as a whole (syntax error,
    /// timeout), else the `repr` of each call or `None` where the call raised.
    pub fn run(&self, jobs: &[Job]) -> Result<Vec<Option<Vec<Option<String>>>>> {
        let batches: Vec<&[Job]> = jobs.chunks(self.batch).collect();
        let parts: Vec<Vec<Option<Vec<Option<String>>>>> =
            batches.par_iter().map(|b| self.run_batch(b)).collect::<Result<_>>()?;
        Ok(parts.into_iter().flatten().collect())
    }

    fn run_batch(&self, jobs: &[Job]) -> Result<Vec<Option<Vec<Option<String>>>>> {
        let mut child = Command::new(&self.python)
            .args(["-I", "-S", "-c", HARNESS])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| DataError::Sandbox(format!("cannot start python3: {e}")))?;
        let mut stdin = child.stdin.take().ok_or_else(|| DataError::Sandbox("no stdin".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| DataError::Sandbox("no stdout".into()))?;
        let input: String = jobs.iter().filter_map(|j| serde_json::to_string(j).ok()).map(|s| s + "\n").collect();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let lines: Vec<String> = BufReader::new(stdout).lines().map_while(|l| l.ok()).collect();
            let _ = tx.send(lines);
        });
        // Each job has a 200 ms timer inside the harness; this bounds the whole process.
        let deadline = Duration::from_secs(30) + Duration::from_millis(250) * jobs.len() as u32;
        let lines = match rx.recv_timeout(deadline) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(DataError::Sandbox(format!("a batch of {} jobs overran {deadline:?}", jobs.len())));
            }
        };
        let _ = writer.join();
        let _ = child.wait();
        let mut out = vec![None; jobs.len()];
        let index: std::collections::HashMap<usize, usize> = jobs.iter().enumerate().map(|(i, j)| (j.id, i)).collect();
        for l in lines {
            if let Ok(r) = serde_json::from_str::<Reply>(&l) {
                if let Some(&i) = index.get(&r.id) {
                    out[i] = r.results;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: usize, code: &str, calls: &[&str]) -> Job {
        Job { id, code: code.into(), calls: calls.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn runs_code_and_contains_bad_code() {
        let Some(sb) = Sandbox::detect() else {
            eprintln!("python3 not found; sandbox test needs CPython 3");
            return;
        };
        let out = sb
            .run(&[
                job(0, "def f(x):\n    return x * 2\n", &["f(21)", "f('ab')", "f(None)"]),
                job(1, "def f(x):\n    while True:\n        pass\n", &["f(1)"]),
                job(2, "import os\n", &["1"]),
                job(3, "def f():\n    return open('/etc/passwd').read()\n", &["f()"]),
                job(4, "def f(:\n", &["f()"]),
                job(5, "def f():\n    return [0] * (10 ** 10)\n", &["f()", "1+1"]),
            ])
            .unwrap();
        assert_eq!(out[0], Some(vec![Some("42".into()), Some("'abab'".into()), None]));
        assert_eq!(out[1], None, "infinite loop is stopped by the timer");
        assert_eq!(out[2], None, "import is not available");
        assert_eq!(out[3], Some(vec![None]), "open is not available");
        assert_eq!(out[4], None, "syntax error");
        assert_eq!(out[5], Some(vec![None, Some("2".into())]), "memory limit raises MemoryError, process survives");
    }
}
