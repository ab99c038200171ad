//! The engine on its own thread: requests go in through a channel, each request's events come back on its own
//! channel, and a callback tells the caller's event loop (the server's `mio::Waker`) that events are waiting.
//! Dropping a request's stream aborts the request, so a client that disconnects frees its slot and KV blocks.
use std::{
    sync::{
        mpsc::{channel, Receiver, RecvTimeoutError, Sender},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use super::{
    core::{Engine, Event, EventKind, Request, RequestId},
    scheduler::SchedulerStats,
};
use crate::{backend::Backend, Error, Result};

enum Command {
    Submit(Box<Request>, Sender<Result<RequestId>>, Sender<Event>),
    Abort(RequestId),
    Shutdown,
}

/// A submitted request's events, in order; the last one of each completion is `Finished`.
pub struct RequestStream {
    pub id: RequestId,
    events: Receiver<Event>,
    commands: Sender<Command>,
    finished: usize,
    n: usize,
}

impl RequestStream {
    /// The next event, or None once every completion finished (or the engine stopped).
    pub fn recv(&mut self) -> Option<Event> {
        if self.finished == self.n {
            return None;
        }
        let ev = self.events.recv().ok()?;
        self.count(&ev);
        Some(ev)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        let ev = self.events.try_recv().ok()?;
        self.count(&ev);
        Some(ev)
    }

    fn count(&mut self, ev: &Event) {
        if matches!(ev.kind, EventKind::Finished { .. }) {
            self.finished += 1;
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if self.finished < self.n {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}

pub struct EngineHandle {
    commands: Sender<Command>,
    stats: Arc<Mutex<SchedulerStats>>,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// Starts the engine thread. `wake` runs after each batch of events is sent.
    pub fn spawn<B: Backend + 'static>(mut engine: Engine<B>, wake: Box<dyn Fn() + Send>) -> Self
    where
        B::KvCache: 'static,
    {
        let (tx, rx) = channel::<Command>();
        let stats = Arc::new(Mutex::new(engine.stats()));
        let shared = stats.clone();
        let thread = std::thread::Builder::new()
            .name("glmv-engine".into())
            .spawn(move || {
                let mut streams: std::collections::HashMap<RequestId, Sender<Event>> = Default::default();
                loop {
                    // Block for work when idle; otherwise only drain what is queued.
                    let first = if engine.has_work() {
                        rx.try_recv().ok()
                    } else {
                        match rx.recv_timeout(Duration::from_millis(100)) {
                            Ok(c) => Some(c),
                            Err(RecvTimeoutError::Timeout) => continue,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    };
                    let mut events = Vec::new();
                    let mut pending = first;
                    while let Some(cmd) = pending {
                        match cmd {
                            Command::Submit(req, reply, events_tx) => {
                                let result = engine.submit(*req);
                                if let Ok(id) = result {
                                    streams.insert(id, events_tx);
                                }
                                let _ = reply.send(result);
                            }
                            Command::Abort(id) => events.extend(engine.abort(id)),
                            Command::Shutdown => return,
                        }
                        pending = rx.try_recv().ok();
                    }
                    if engine.has_work() {
                        match engine.step() {
                            Ok(evs) => events.extend(evs),
                            Err(e) => {
                                // A failed step fails every request in it; the engine keeps serving others.
                                eprintln!("[glmv] engine step failed: {e}");
                                let ids: Vec<RequestId> = streams.keys().copied().collect();
                                for id in ids {
                                    events.extend(engine.abort(id));
                                }
                            }
                        }
                    }
                    if let Ok(mut s) = shared.lock() {
                        *s = engine.stats();
                    }
                    if events.is_empty() {
                        continue;
                    }
                    let mut finished = Vec::new();
                    for ev in events {
                        if matches!(ev.kind, EventKind::Finished { .. }) {
                            finished.push(ev.request);
                        }
                        if let Some(tx) = streams.get(&ev.request) {
                            let _ = tx.send(ev);
                        }
                    }
                    // Only after the whole batch: several completions of one request can finish in the same step.
                    for id in finished {
                        if !engine.is_running(id) {
                            streams.remove(&id);
                        }
                    }
                    wake();
                }
            })
            .expect("spawn the engine thread");
        EngineHandle { commands: tx, stats, thread: Some(thread) }
    }

    pub fn submit(&self, req: Request) -> Result<RequestStream> {
        let n = req.n;
        let (reply_tx, reply_rx) = channel();
        let (events_tx, events_rx) = channel();
        self.commands
            .send(Command::Submit(Box::new(req), reply_tx, events_tx))
            .map_err(|_| Error::InvalidInput("the engine has stopped".into()))?;
        let id = reply_rx.recv().map_err(|_| Error::InvalidInput("the engine has stopped".into()))??;
        Ok(RequestStream { id, events: events_rx, commands: self.commands.clone(), finished: 0, n })
    }

    /// Running/waiting sequences, KV usage and prefix hit counts, as of the last step.
    pub fn stats(&self) -> SchedulerStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
