//! `sidecar-injector rollout`: restarts Deployments, StatefulSets and DaemonSets (the restart
//! `kubectl rollout restart` does) at a cluster-wide pace, one after another or `--parallel N`,
//! waiting for each rollout, and stops at the first that fails.
//!
//! Exit codes: 0 when every rollout finished (or `--dry-run`), 1 when one failed or timed out,
//! 2 when the cluster cannot be read or the arguments are wrong.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::outdated::TargetArgs;
use crate::cluster;
use crate::cluster::rollout::{
    self as runner, Event, Events, Item, Settings, Summary, WallClock, humanize,
};
use crate::cluster::upgrade::{Scope, valid_name};
use crate::upgrade::owners::Restart;
use crate::upgrade::reason::shown;
use crate::upgrade::rollout::Kind;

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// Workloads to restart: `deployment/NAME`, `statefulset/NAME`, `daemonset/NAME` (or
    /// `deploy`, `sts`, `ds`), in the namespace of -n. With --outdated, only those of them
    /// with stale pods.
    #[arg(value_name = "KIND/NAME")]
    pub workloads: Vec<String>,

    /// Restart the Deployments, StatefulSets and DaemonSets that `outdated` finds stale.
    /// Workloads whose pods are fresh are skipped, so running it again continues where a
    /// stopped run left off.
    #[arg(long)]
    pub outdated: bool,

    #[command(flatten)]
    pub target: TargetArgs,

    /// Print what would be restarted, and do nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Rollouts under way at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,

    /// Pods restarted per minute, across the cluster: a workload starts when its pods and those
    /// started in the last 60 s are at most this many (a larger workload runs alone in its
    /// minute).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_pods_per_minute: u32,

    /// How long each workload's rollout may take (`10m`, `1h30m`; `0`: no limit). A Deployment
    /// also fails when it exceeds its own progressDeadlineSeconds.
    #[arg(long, default_value = "10m", value_parser = parse_timeout)]
    pub timeout: Timeout,
}

/// `--timeout`: a duration, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Option<Duration>);

fn parse_timeout(text: &str) -> Result<Timeout, String> {
    if text.trim() == "0" {
        return Ok(Timeout(None));
    }
    let d = crate::certs::duration::parse(text)?;
    Ok(Timeout((!d.is_zero()).then_some(d)))
}

/// `KIND/NAME` to a kind and a name.
fn parse_workload(text: &str) -> anyhow::Result<(Kind, String)> {
    let Some((kind, name)) = text.split_once('/') else {
        bail!("{text:?}: expected KIND/NAME, e.g. deployment/cart");
    };
    let Some(kind) = Kind::parse(kind) else {
        bail!(
            "{text:?}: {kind:?} cannot be restarted by a rollout; accepted: deployment, statefulset, daemonset (or deploy, sts, ds)"
        );
    };
    if !valid_name(name) {
        bail!("{text:?}: {name:?} is not a Kubernetes name");
    }
    Ok((kind, name.to_string()))
}

/// The plan: the workloads to restart, and the stale ones a rollout leaves to the user.
#[derive(Debug, Default)]
pub struct Plan {
    pub items: Vec<Item>,
    /// `(workload, what to do)`.
    pub left_alone: Vec<(String, String)>,
    /// Pods `outdated` could not judge: their workloads are not in the plan.
    pub errors: Vec<String>,
}

/// Works out what to restart.
pub async fn plan(args: &RolloutArgs, client: &kube::Client) -> anyhow::Result<Plan> {
    let named: Vec<(Kind, String)> = args
        .workloads
        .iter()
        .map(|w| parse_workload(w))
        .collect::<anyhow::Result<_>>()?;
    if named.is_empty() && !args.outdated {
        bail!("name the workloads to restart (deployment/NAME ...), or pass --outdated");
    }
    let scope = args.target.scope(client)?;
    if !named.is_empty() && scope == Scope::All {
        bail!("named workloads need one namespace (-n), not -A");
    }
    let namespace = match &scope {
        Scope::Namespace(ns) => ns.clone(),
        Scope::All => String::new(),
    };
    if !args.outdated {
        return Ok(Plan {
            items: named
                .into_iter()
                .map(|(kind, name)| Item {
                    kind,
                    namespace: namespace.clone(),
                    name,
                })
                .collect(),
            left_alone: Vec::new(),
            errors: Vec::new(),
        });
    }
    let report = args.target.report(client).await?;
    let mut plan = Plan {
        errors: report.errors.clone(),
        ..Plan::default()
    };
    for w in &report.stale {
        let kind = Kind::parse(&w.workload.kind).filter(|_| w.restart == Restart::Rollout);
        if !named.is_empty()
            && !named
                .iter()
                .any(|(k, n)| Some(*k) == kind && *n == w.workload.name)
        {
            continue;
        }
        let label = format!(
            "{} {}/{}",
            shown(&w.workload.kind),
            shown(&w.workload.namespace),
            shown(&w.workload.name)
        );
        if let Some(reason) = w.blocked() {
            plan.left_alone.push((
                label,
                format!("not restarted, its pods would not be re-created: {reason}"),
            ));
            continue;
        }
        match kind {
            Some(kind) => plan.items.push(Item {
                kind,
                namespace: w.workload.namespace.clone(),
                name: w.workload.name.clone(),
            }),
            None => plan
                .left_alone
                .push((label, w.restart.action().to_string())),
        }
    }
    Ok(plan)
}

/// The closing text: what was done, what failed and why, what is left.
pub fn summary_text(plan: &Plan, summary: &Summary, dry_run: bool, elapsed: Duration) -> String {
    let mut out = String::new();
    let pods: u64 = summary.done.iter().map(|(_, p)| p).sum();
    let total = plan.items.len();
    if dry_run {
        let _ = writeln!(
            out,
            "would restart {} of {} ({} pods)",
            summary.done.len(),
            if total == 1 {
                "1 workload".into()
            } else {
                format!("{total} workloads")
            },
            pods
        );
    } else {
        let _ = writeln!(
            out,
            "rolled out {} of {} ({} pods) in {}",
            summary.done.len(),
            if total == 1 {
                "1 workload".into()
            } else {
                format!("{total} workloads")
            },
            pods,
            humanize(elapsed)
        );
    }
    for (item, why) in &summary.failed {
        let _ = writeln!(out, "failed: {item}: {why}");
    }
    if !summary.not_started.is_empty() {
        let names: Vec<String> = summary
            .not_started
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(
            out,
            "not started: {}; run the command again to continue (with --outdated, workloads already fresh are skipped)",
            names.join(", ")
        );
    }
    for (item, why) in &summary.skipped {
        let _ = writeln!(out, "skipped: {item}: {why}");
    }
    for (label, what) in &plan.left_alone {
        let _ = writeln!(out, "left alone: {label}: {what}");
    }
    for e in &plan.errors {
        let _ = writeln!(out, "not judged: {e}");
    }
    out
}

/// Plain lines on standard error, for logs (a CronJob, CI).
pub struct PlainLines {
    start: tokio::time::Instant,
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

impl PlainLines {
    pub fn new(out: Box<dyn std::io::Write + Send>) -> PlainLines {
        PlainLines {
            start: tokio::time::Instant::now(),
            out: Mutex::new(out),
        }
    }
}

/// One line per event, without the time.
pub fn event_line(event: &Event) -> String {
    match event {
        Event::Planned { item, pods } => format!("{item}: would restart ({pods} pods)"),
        Event::Skipped { item, why } => format!("{item}: skipped: {why}"),
        Event::Pacing { item, wait } => format!(
            "{item}: waiting {} for the pod budget",
            humanize(*wait).replace("0s", "<1s")
        ),
        Event::Restarted { item, pods } => format!("{item}: restarted ({pods} pods)"),
        Event::Resumed { item, pods } => {
            format!("{item}: a rollout is already under way, waiting for it ({pods} pods left)")
        }
        Event::Progress { item, message } => format!("{item}: {message}"),
        Event::Done { item, message } => format!("{item}: {message}"),
        Event::Failed { item, why } => format!("{item}: FAILED: {why}"),
    }
}

impl Events for PlainLines {
    fn event(&self, event: Event) {
        let line = format!(
            "[{}] {}\n",
            humanize(self.start.elapsed()),
            event_line(&event)
        );
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

/// A progress bar of the pods restarted, and a line per rollout under way (on a terminal).
pub struct Bars {
    multi: indicatif::MultiProgress,
    total: indicatif::ProgressBar,
    lines: Mutex<HashMap<Item, indicatif::ProgressBar>>,
    pods: Mutex<HashMap<Item, u64>>,
}

impl Bars {
    pub fn new(pods: u64) -> Bars {
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} pods {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        let total = multi.add(indicatif::ProgressBar::new(pods).with_style(style));
        Bars {
            multi,
            total,
            lines: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
        }
    }

    fn line(&self, item: &Item) -> Option<indicatif::ProgressBar> {
        let mut lines = self.lines.lock().ok()?;
        Some(
            lines
                .entry(item.clone())
                .or_insert_with(|| {
                    let bar = self.multi.add(indicatif::ProgressBar::new_spinner());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                })
                .clone(),
        )
    }

    fn close(&self, item: &Item, text: String) {
        if let Some(bar) = self.lines.lock().ok().and_then(|mut l| l.remove(item)) {
            bar.finish_and_clear();
        }
        let _ = self.multi.println(text);
    }

    pub fn finish(&self) {
        self.total.finish_and_clear();
    }
}

impl Events for Bars {
    fn event(&self, event: Event) {
        match &event {
            Event::Pacing { wait, .. } => self.total.set_message(format!(
                "(pacing: next in {})",
                humanize(*wait).replace("0s", "<1s")
            )),
            Event::Restarted { item, pods } | Event::Resumed { item, pods } => {
                self.total.set_message("");
                if let Ok(mut p) = self.pods.lock() {
                    p.insert(item.clone(), *pods);
                }
                if let Some(bar) = self.line(item) {
                    bar.set_message(event_line(&event));
                }
            }
            Event::Progress { item, .. } => {
                if let Some(bar) = self.line(item) {
                    bar.set_message(event_line(&event));
                }
            }
            Event::Done { item, .. } => {
                let pods = self
                    .pods
                    .lock()
                    .ok()
                    .and_then(|p| p.get(item).copied())
                    .unwrap_or(0);
                self.total.inc(pods);
                self.close(item, format!("✔ {}", event_line(&event)));
            }
            Event::Failed { item, .. } => self.close(item, format!("✘ {}", event_line(&event))),
            Event::Planned { item, .. } | Event::Skipped { item, .. } => {
                self.close(item, event_line(&event));
            }
        }
    }
}

/// Runs the plan with the flags' settings.
pub async fn execute(
    args: &RolloutArgs,
    client: &kube::Client,
    clock: &WallClock,
    events: &dyn Events,
    plan: &Plan,
) -> Summary {
    let settings = Settings {
        parallel: usize::from(args.parallel),
        per_minute: args.max_pods_per_minute,
        timeout: args.timeout.0,
        dry_run: args.dry_run,
        field_manager: "sidecar-injector-rollout".into(),
    };
    runner::run(client, plan.items.clone(), &settings, clock, events).await
}

pub fn run(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result: anyhow::Result<(String, bool)> = runtime.block_on(async {
        let client = cluster::client_for(args.target.context.as_deref()).await?;
        let plan = plan(&args, &client).await?;
        let start = tokio::time::Instant::now();
        let clock = time::OffsetDateTime::now_utc;
        let summary = if std::io::stderr().is_terminal() && !args.dry_run {
            let bars = Bars::new(0);
            // The bar's length is known once the workloads are read; count as they start.
            let summary = execute(&args, &client, &clock, &CountingBars(&bars), &plan).await;
            bars.finish();
            summary
        } else {
            let lines = PlainLines::new(Box::new(std::io::stderr()));
            execute(&args, &client, &clock, &lines, &plan).await
        };
        Ok((
            summary_text(&plan, &summary, args.dry_run, start.elapsed()),
            !summary.failed.is_empty(),
        ))
    });
    match result {
        Ok((text, failed)) => {
            std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .context("cannot write to standard output")?;
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Grows the bar's length as workloads start, so it reads "pods restarted of pods started".
struct CountingBars<'a>(&'a Bars);

impl Events for CountingBars<'_> {
    fn event(&self, event: Event) {
        if let Event::Restarted { pods, .. } | Event::Resumed { pods, .. } = &event {
            self.0.total.inc_length(*pods);
        }
        self.0.event(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str) -> Item {
        Item {
            kind: Kind::Deployment,
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_bar_counts_the_pods_of_finished_rollouts() {
        let bars = Bars::new(0);
        let counting = CountingBars(&bars);
        counting.event(Event::Restarted {
            item: item("a"),
            pods: 3,
        });
        counting.event(Event::Resumed {
            item: item("b"),
            pods: 2,
        });
        counting.event(Event::Progress {
            item: item("a"),
            message: "Waiting".into(),
        });
        counting.event(Event::Done {
            item: item("a"),
            message: "done".into(),
        });
        counting.event(Event::Failed {
            item: item("b"),
            why: "deadline".into(),
        });
        assert_eq!(bars.total.length(), Some(5));
        assert_eq!(bars.total.position(), 3);
        assert!(
            bars.lines.lock().unwrap().is_empty(),
            "finished lines are closed"
        );
        bars.finish();
    }

    #[test]
    fn timeouts_and_workload_names_parse_as_documented() {
        assert_eq!(parse_timeout("0"), Ok(Timeout(None)));
        assert_eq!(
            parse_timeout("1h30m"),
            Ok(Timeout(Some(Duration::from_secs(5400))))
        );
        assert!(parse_timeout("soon").is_err());
        assert_eq!(
            parse_workload("sts/db").unwrap(),
            (Kind::StatefulSet, "db".to_string())
        );
        assert!(parse_workload("deploy/Cart").is_err());
        assert!(parse_workload("deploy/../x").is_err());
    }
}
