//! Restarts workloads as `kubectl rollout restart` does and waits for each rollout as `kubectl
//! rollout status` does, at a cluster-wide pace.
//!
//! Workloads start in the order given, at most `parallel` at a time, each once the pod budget
//! ([`Budget`]) holds its pods; a workload already rolling out (an earlier run was interrupted)
//! is waited for, not restarted again. The first rollout that fails (its progress deadline, or
//! `timeout`) stops the run: nothing new starts, the rollouts under way are waited for, and the
//! summary names the failure. Run again, the workloads already fresh are not in the plan (with
//! `--outdated`) and the run continues where it stopped.
//!
//! Time comes from tokio (`tokio::time`), so tests run it on a paused clock.

use std::fmt::Debug;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::de::DeserializeOwned;

use super::upgrade::explain;
use crate::upgrade::pace::Budget;
use crate::upgrade::rollout::{Kind, Status, Workload, restart_patch, restart_value};

/// One workload to restart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Item {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rollouts under way at once (at least 1).
    pub parallel: usize,
    /// Pods restarted per minute, cluster-wide.
    pub per_minute: u32,
    /// How long one workload's rollout may take; `None`: as long as it takes.
    pub timeout: Option<Duration>,
    /// Read and plan only: no patch.
    pub dry_run: bool,
    /// The field manager written with the patch (kubectl writes `kubectl-rollout`).
    pub field_manager: String,
}

/// What happens, as it happens: for the progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Dry run: would restart `pods` pods.
    Planned {
        item: Item,
        pods: u64,
    },
    /// Not restarted, and why (paused, OnDelete, gone).
    Skipped {
        item: Item,
        why: String,
    },
    /// Waiting for the pod budget before the next workload.
    Pacing {
        item: Item,
        wait: Duration,
    },
    /// The restart was sent.
    Restarted {
        item: Item,
        pods: u64,
    },
    /// A rollout was already under way: waiting for it instead of restarting again.
    Resumed {
        item: Item,
        pods: u64,
    },
    /// kubectl's words for where the rollout stands.
    Progress {
        item: Item,
        message: String,
    },
    Done {
        item: Item,
        message: String,
    },
    Failed {
        item: Item,
        why: String,
    },
}

/// Receives the events (a progress bar, or plain lines).
pub trait Events: Send + Sync {
    fn event(&self, event: Event);
}

/// How the run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rolled out (or, in a dry run, planned), with their pods.
    pub done: Vec<(Item, u64)>,
    pub skipped: Vec<(Item, String)>,
    /// The rollout that failed first, and why; later failures of rollouts already under way.
    pub failed: Vec<(Item, String)>,
    /// Not started because of a failure.
    pub not_started: Vec<Item>,
}

/// Returns the wall-clock time for the restart annotation.
pub type WallClock = dyn Fn() -> time::OffsetDateTime + Send + Sync;

async fn read(client: &kube::Client, item: &Item) -> Result<Option<Workload>, kube::Error> {
    let ns = &item.namespace;
    Ok(match item.kind {
        Kind::Deployment => Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(&item.name)
            .await?
            .map(|d| Workload::Deployment(Box::new(d))),
        Kind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get_opt(&item.name)
            .await?
            .map(|s| Workload::StatefulSet(Box::new(s))),
        Kind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), ns)
            .get_opt(&item.name)
            .await?
            .map(|d| Workload::DaemonSet(Box::new(d))),
    })
}

async fn restart(
    client: &kube::Client,
    item: &Item,
    at: &str,
    field_manager: &str,
) -> Result<(), kube::Error> {
    let ns = &item.namespace;
    let params = PatchParams {
        field_manager: Some(field_manager.to_string()),
        ..PatchParams::default()
    };
    let patch = Patch::Strategic(restart_patch(at));
    match item.kind {
        Kind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), ns)
                .patch(&item.name, &params, &patch)
                .await?;
        }
        Kind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .patch(&item.name, &params, &patch)
                .await?;
        }
        Kind::DaemonSet => {
            Api::<DaemonSet>::namespaced(client.clone(), ns)
                .patch(&item.name, &params, &patch)
                .await?;
        }
    }
    Ok(())
}

/// Watches one object until its rollout is done or failed.
async fn watch_until<K>(
    api: Api<K>,
    item: &Item,
    wrap: fn(K) -> Workload,
    events: &dyn Events,
) -> Result<String, String>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={}", item.name));
    let stream = watcher(api, config).default_backoff();
    futures_util::pin_mut!(stream);
    let mut last = String::new();
    while let Some(event) = stream.next().await {
        let object = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
            Ok(watcher::Event::Delete(_)) => {
                return Err("it was deleted during its rollout".into());
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
            Err(e) => {
                // The watcher retries with backoff; a lasting failure ends in the timeout,
                // which reports it.
                let message = format!("watch failed, retrying: {e}");
                if message != last {
                    events.event(Event::Progress {
                        item: item.clone(),
                        message: message.clone(),
                    });
                    last = message;
                }
                continue;
            }
        };
        match wrap(object).status() {
            Status::Done(message) => return Ok(message),
            Status::Failed(why) => return Err(why),
            Status::Waiting(message) => {
                if message != last {
                    events.event(Event::Progress {
                        item: item.clone(),
                        message: message.clone(),
                    });
                    last = message;
                }
            }
        }
    }
    Err("the watch ended".into())
}

async fn wait_for(
    client: kube::Client,
    item: Item,
    timeout: Option<Duration>,
    events: &dyn Events,
) -> (Item, Result<String, String>) {
    let ns = item.namespace.clone();
    let watch = async {
        match item.kind {
            Kind::Deployment => {
                watch_until(
                    Api::<Deployment>::namespaced(client.clone(), &ns),
                    &item,
                    |d| Workload::Deployment(Box::new(d)),
                    events,
                )
                .await
            }
            Kind::StatefulSet => {
                watch_until(
                    Api::<StatefulSet>::namespaced(client.clone(), &ns),
                    &item,
                    |s| Workload::StatefulSet(Box::new(s)),
                    events,
                )
                .await
            }
            Kind::DaemonSet => {
                watch_until(
                    Api::<DaemonSet>::namespaced(client.clone(), &ns),
                    &item,
                    |d| Workload::DaemonSet(Box::new(d)),
                    events,
                )
                .await
            }
        }
    };
    let result = match timeout {
        None => watch.await,
        Some(limit) => match tokio::time::timeout(limit, watch).await {
            Ok(r) => r,
            Err(_) => {
                // Say where it stood.
                let stood = match read(&client, &item).await {
                    Ok(Some(w)) => match w.status() {
                        Status::Waiting(m) | Status::Done(m) | Status::Failed(m) => m,
                    },
                    Ok(None) => "it no longer exists".into(),
                    Err(e) => format!("cannot read it: {}", explain(&e)),
                };
                Err(format!(
                    "its rollout did not finish within {}: {stood}",
                    humanize(limit)
                ))
            }
        },
    };
    (item, result)
}

/// `90s` -> `1m30s`.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// Restarts `items` in order; see the module documentation.
pub async fn run(
    client: &kube::Client,
    items: Vec<Item>,
    settings: &Settings,
    clock: &WallClock,
    events: &dyn Events,
) -> Summary {
    let mut summary = Summary::default();
    let origin = tokio::time::Instant::now();
    let mut budget = Budget::new(settings.per_minute);
    let parallel = settings.parallel.max(1);
    let mut running = FuturesUnordered::new();
    let mut pods_of = std::collections::HashMap::new();
    let mut stopped = false;

    let finish = |summary: &mut Summary,
                  stopped: &mut bool,
                  pods_of: &std::collections::HashMap<Item, u64>,
                  (item, result): (Item, Result<String, String>)| {
        match result {
            Ok(message) => {
                events.event(Event::Done {
                    item: item.clone(),
                    message,
                });
                let pods = pods_of.get(&item).copied().unwrap_or(0);
                summary.done.push((item, pods));
            }
            Err(why) => {
                events.event(Event::Failed {
                    item: item.clone(),
                    why: why.clone(),
                });
                summary.failed.push((item, why));
                *stopped = true;
            }
        }
    };

    for item in items {
        if stopped {
            summary.not_started.push(item);
            continue;
        }
        while running.len() >= parallel {
            if let Some(done) = running.next().await {
                finish(&mut summary, &mut stopped, &pods_of, done);
            }
        }
        if stopped {
            summary.not_started.push(item);
            continue;
        }
        let workload = match read(client, &item).await {
            Ok(Some(w)) => w,
            Ok(None) => {
                let why = "it no longer exists".to_string();
                events.event(Event::Skipped {
                    item: item.clone(),
                    why: why.clone(),
                });
                summary.skipped.push((item, why));
                continue;
            }
            Err(e) => {
                let why = format!("cannot read it: {}", explain(&e));
                events.event(Event::Failed {
                    item: item.clone(),
                    why: why.clone(),
                });
                summary.failed.push((item, why));
                stopped = true;
                continue;
            }
        };
        if let Some(why) = workload.cannot_restart() {
            events.event(Event::Skipped {
                item: item.clone(),
                why: why.clone(),
            });
            summary.skipped.push((item, why));
            continue;
        }
        // A rollout under way (a run stopped midway, or someone else's): wait for it.
        let under_way = matches!(workload.status(), Status::Waiting(_));
        let pods = if under_way {
            workload.pods_left()
        } else {
            workload.pods()
        };
        if settings.dry_run {
            events.event(Event::Planned {
                item: item.clone(),
                pods,
            });
            summary.done.push((item, pods));
            continue;
        }
        // Wait for the budget, noting rollouts that end meanwhile.
        loop {
            let wait = budget.wait(pods, origin.elapsed());
            if wait.is_zero() {
                break;
            }
            events.event(Event::Pacing {
                item: item.clone(),
                wait,
            });
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    Some(done) = running.next(), if !running.is_empty() => {
                        finish(&mut summary, &mut stopped, &pods_of, done);
                        if stopped {
                            break;
                        }
                    }
                }
            }
            if stopped {
                break;
            }
        }
        if stopped {
            summary.not_started.push(item);
            continue;
        }
        budget.take(pods, origin.elapsed());
        if under_way {
            events.event(Event::Resumed {
                item: item.clone(),
                pods,
            });
        } else {
            let at = restart_value(clock(), workload.restarted_at());
            if let Err(e) = restart(client, &item, &at, &settings.field_manager).await {
                let why = format!("the restart was refused: {}", explain(&e));
                events.event(Event::Failed {
                    item: item.clone(),
                    why: why.clone(),
                });
                summary.failed.push((item, why));
                stopped = true;
                continue;
            }
            events.event(Event::Restarted {
                item: item.clone(),
                pods,
            });
        }
        pods_of.insert(item.clone(), pods);
        running.push(wait_for(client.clone(), item, settings.timeout, events));
    }
    while let Some(done) = running.next().await {
        finish(&mut summary, &mut stopped, &pods_of, done);
    }
    summary
}
