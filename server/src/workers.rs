//! A fixed pool of worker threads for blocking work the event loop must not do: fetching and decoding media,
//! rendering templates, tokenising (`--mm-max-concurrent-calls` of them).
use std::{
    sync::{
        mpsc::{channel, Sender},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

type Job = Box<dyn FnOnce() + Send>;

pub struct Workers {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    pub fn new(count: usize) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let rx = rx.clone();
            threads.push(std::thread::Builder::new().name(format!("glmv-worker-{i}")).spawn(move || loop {
                let job = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                match job {
                    // A job that panics must not take its worker with it.
                    Ok(job) => drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))),
                    Err(_) => return,
                }
            })?);
        }
        Ok(Workers { jobs: Some(tx), threads })
    }

    /// Queues a job; false once the pool is shutting down.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> bool {
        self.jobs.as_ref().is_some_and(|tx| tx.send(Box::new(job)).is_ok())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
