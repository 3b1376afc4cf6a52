//! The alerting rules and the Grafana dashboard in deploy/, checked with
//! the real tools: `promtool`, and a real Prometheus server (Debian's
//! `prometheus` package) scraping netpath in the lab's host netns.
//!
//! Host only: the VM image has no Prometheus (xtask/src/vm/build.rs,
//! `HOST_ONLY_TESTS`).
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netpath_tests::{Lab, Server, curl, http_source, run, unique_name};
use serde_json::Value;

/// Where the agent serves metrics, in H.
const METRICS: &str = "127.0.0.1:9477";
/// Where the test's Prometheus listens, in H (a netns of the test's own,
/// so parallel tests do not collide).
const PROMETHEUS: &str = "127.0.0.1:9090";
/// Bound on waiting for Prometheus to start, scrape and evaluate.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn rules_file() -> PathBuf {
    deploy().join("prometheus/netpath-rules.yml")
}

#[test]
fn alerting_rules_pass_promtool_check_and_their_unit_tests() {
    run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(rules_file()))
    .expect_ok("promtool check rules");
    run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(deploy().join("prometheus/netpath-rules.test.yml")))
    .expect_ok("promtool test rules");
}

/// A Prometheus server in H with its config, data and log in a directory
/// of its own; killed by pid and its directory removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Scrapes `METRICS` every second as job "netpath" and evaluates
    /// deploy/'s alerting rules every second.
    fn start(lab: &Lab) -> Self {
        let dir = std::env::temp_dir().join(unique_name("prom"));
        std::fs::create_dir(&dir).expect("creating Prometheus's directory");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: netpath\n    static_configs:\n      - targets: ['{METRICS}']\n",
            rules = rules_file().display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("writing prometheus.yml");
        let log = File::create(dir.join("prometheus.log")).expect("creating prometheus.log");
        let mut cmd = lab.host.command("prometheus");
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log);
        let child = cmd.spawn().expect("spawning prometheus");
        Self { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` of the HTTP API from inside H, with `query` URL-encoded;
    /// the `data` of a successful answer, or why not.
    fn api(&self, lab: &Lab, path: &str, query: Option<&str>) -> Result<Value, String> {
        let url = format!("http://{PROMETHEUS}{path}");
        let param = query.map(|q| format!("query={q}"));
        let mut args = vec!["-G", url.as_str()];
        if let Some(param) = &param {
            args.extend(["--data-urlencode", param.as_str()]);
        }
        let out = curl(&lab.host, &args);
        if !out.success() {
            return Err(out.to_string());
        }
        let answer: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {out}"))?;
        match answer["status"].as_str() {
            Some("success") => Ok(answer["data"].clone()),
            _ => Err(answer.to_string()),
        }
    }

    /// The result vector of an instant query.
    fn query(&self, lab: &Lab, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api(lab, "/api/v1/query", Some(expr))?;
        data["result"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("no result vector: {data}"))
    }

    /// Polls `check` until it gives `Ok`, or panics with its last error and
    /// Prometheus's log after `PROMETHEUS_TIMEOUT`.
    #[track_caller]
    fn wait_for<T>(&self, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            match check() {
                Ok(value) => return value,
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "{what}: not within {PROMETHEUS_TIMEOUT:?}; last: {e}\n--- prometheus log\n{}",
                        self.log()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of a one-sample instant query result.
fn sample_value(result: &[Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Every `netpath_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("netpath_"))
        .map(str::to_owned)
        .collect()
}

/// The dashboard's queries, with its variables set as Grafana would for
/// this one scrape job.
fn dashboard_queries() -> Vec<String> {
    let path = deploy().join("grafana/netpath.json");
    let text = std::fs::read_to_string(&path).expect("reading the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("dashboard panels");
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .map(|e| {
            e.replace("$job", "netpath")
                .replace("$instance", ".*")
                .replace("$__rate_interval", "5s")
        })
        .collect();
    assert!(queries.len() >= 10, "{queries:?}");
    queries
}

#[test]
fn a_real_prometheus_scrapes_netpath_and_its_dashboard_queries_answer() {
    let lab = Lab::new();
    lab.up_ok(&["--metrics", METRICS]);
    let web = lab.container_name("w");
    lab.container_add_ok(&web, &[]);
    let web_ip = lab.container_ip(&web).expect("container address");
    let _server = Server::http(lab.container(&web), "0.0.0.0", 8080);
    lab.netpath(&["publish", "add", &web, "18090:8080"])
        .expect_ok("publish");
    let prometheus = Prometheus::start(&lab);

    // Traffic through the published port, and an attack-ish packet: the
    // outside routes the container subnet via the host and tries the
    // container directly (dropped as unsolicited).
    for _ in 0..3 {
        http_source(&lab.outside, &format!("http://{}:18090/", Lab::HOST_IP))
            .expect("curl via the published port");
    }
    lab.outside
        .exec(&["ip", "route", "add", "10.77.0.0/16", "via", Lab::HOST_IP])
        .expect_ok("the outside routes the container subnet via the host");
    let direct = curl(
        &lab.outside,
        &["--connect-timeout", "1", &format!("http://{web_ip}:8080/")],
    );
    assert!(!direct.success(), "the container was reached: {direct}");

    let entries = prometheus.wait_for("netpath_conntrack_entries scraped", || {
        let result = prometheus.query(&lab, "sum(netpath_conntrack_entries{job=\"netpath\"})")?;
        sample_value(&result)
            .filter(|v| *v >= 3.0)
            .ok_or_else(|| format!("{result:?}"))
    });
    assert!(entries >= 3.0);
    prometheus.wait_for("the unsolicited drop scraped", || {
        let result = prometheus.query(
            &lab,
            "netpath_drops_total{job=\"netpath\",reason=\"unsolicited\"}",
        )?;
        sample_value(&result)
            .filter(|v| *v >= 1.0)
            .ok_or_else(|| format!("{result:?}"))
    });

    // Every metric the rules and the dashboard use is one netpath exports.
    let exported: BTreeSet<String> = prometheus.wait_for("metric names", || {
        let names = prometheus.api(&lab, "/api/v1/label/__name__/values", None)?;
        let names: BTreeSet<String> = names
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        Ok(names)
    });
    let rules = std::fs::read_to_string(rules_file()).expect("reading the rules");
    let queries = dashboard_queries();
    let used: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(queries.iter().flat_map(|q| metric_names(q)))
        .collect();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by deploy/ but not exported: {missing:?}"
    );

    // Each dashboard query is valid PromQL with data behind it.
    for query in &queries {
        prometheus.wait_for(&format!("dashboard query {query}"), || {
            let result = prometheus.query(&lab, query)?;
            if result.is_empty() {
                Err("empty result".to_owned())
            } else {
                Ok(())
            }
        });
    }

    // The server loaded the rules and evaluates them without errors.
    let alerts = rules.matches("- alert:").count();
    prometheus.wait_for("alerting rules evaluated", || {
        let data = prometheus.api(&lab, "/api/v1/rules", None)?;
        let loaded: Vec<&Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["name"] == "netpath")
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let healthy = loaded.iter().filter(|r| r["health"] == "ok").count();
        if loaded.len() == alerts && healthy == alerts {
            Ok(())
        } else {
            Err(format!(
                "{} of {alerts} rules loaded, {healthy} healthy: {data}",
                loaded.len()
            ))
        }
    });
}
