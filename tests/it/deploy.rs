//! The deployment files: kustomize overlays build and validate against the
//! Kubernetes schemas (kubectl kustomize + kubernetes-validate, offline), the
//! PrometheusRule is the alerts/ rules verbatim, the example Prometheus
//! configuration checks with promtool, every shipped tenantwatch.toml passes
//! `tenantwatch check-config`, and the image and unit run as non-root.
//! Needs kubectl and kubernetes-validate (scripts/test.sh installs them).

use std::process::{Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(program: &str, install: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} is needed ({install}; scripts/test.sh does it): {e}")
        });
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kustomize_overlays_build_and_validate() {
    for (overlay, workload) in [("sidecar", "StatefulSet"), ("standalone", "Deployment")] {
        let manifests = run(
            "kubectl",
            "apt-get install kubernetes-client",
            &["kustomize", &format!("deploy/kustomize/overlays/{overlay}")],
            None,
        );
        for kind in [
            workload,
            "Service",
            "ConfigMap",
            "ServiceMonitor",
            "PrometheusRule",
        ] {
            assert!(
                manifests.contains(&format!("kind: {kind}\n")),
                "{overlay} lacks a {kind}"
            );
        }
        // Every dashboard as a ConfigMap Grafana's sidecar picks up.
        for board in ["fleet", "tenant", "noisy-neighbours", "capacity", "health"] {
            let name = format!("name: tenantwatch-dashboard-{board}\n");
            let at = manifests
                .find(&name)
                .unwrap_or_else(|| panic!("{overlay}: no ConfigMap for the {board} dashboard"));
            let object_start = manifests[..at].rfind("\n---").map_or(0, |i| i + 4);
            let object_end = manifests[at..]
                .find("\n---")
                .map_or(manifests.len(), |i| at + i);
            let object = &manifests[object_start..object_end];
            assert!(object.contains("kind: ConfigMap"), "{object}");
            assert!(
                object.contains("grafana_dashboard: \"1\""),
                "{overlay}/{board}: label"
            );
            assert!(
                object.contains(&format!("{board}.json: |")),
                "{overlay}/{board}: data"
            );
        }
        let file = std::env::temp_dir().join(format!("tw-{overlay}-{}.yaml", std::process::id()));
        std::fs::write(&file, &manifests).unwrap();
        let report = run(
            "kubernetes-validate",
            "pip install kubernetes-validate",
            &["--strict", file.to_str().unwrap()],
            None,
        );
        let mut kinds = vec![
            workload.to_ascii_lowercase(),
            "service".into(),
            "configmap".into(),
            "networkpolicy".into(),
        ];
        if overlay == "standalone" {
            kinds.push("poddisruptionbudget".into());
        }
        for kind in kinds {
            assert!(
                report.contains(&format!("passed for resource {kind}/")),
                "{overlay}: {kind} not validated:\n{report}"
            );
        }
        std::fs::remove_file(file).unwrap();
    }
}

/// The PrometheusRule's spec is the rules file's groups (both generated
/// from the mixin; tests/it/dashboards.rs keeps them equal to its output).
#[test]
fn the_prometheusrule_holds_the_rule_files_groups() {
    let rule = std::fs::read_to_string(format!("{ROOT}/deploy/kustomize/base/prometheusrule.yaml"))
        .unwrap();
    let file = std::fs::read_to_string(format!("{ROOT}/alerts/tenantwatch.rules.yml")).unwrap();
    let groups_of_file: Vec<&str> = file
        .lines()
        .skip_while(|l| !l.starts_with("groups:"))
        .collect();
    let groups_of_rule: Vec<&str> = rule
        .lines()
        .skip_while(|l| !l.starts_with("  groups:"))
        .take_while(|l| l.is_empty() || l.starts_with("  "))
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect();
    assert!(groups_of_file.len() > 100);
    assert_eq!(groups_of_rule, groups_of_file);
}

#[test]
fn the_example_prometheus_config_checks() {
    // promtool reads the files the config names: the rules from the
    // repository, and the read token from a stand-in for the file an
    // operator installs.
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/prometheus.yml")).unwrap();
    let token_file = "/etc/prometheus/tenantwatch-read-token";
    assert!(text.contains(&format!("credentials_file: {token_file}")));
    let dir = std::env::temp_dir().join(format!("tw-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("read-token"), "stand-in\n").unwrap();
    let config = dir.join("prometheus.yml");
    let text = text
        .replace(token_file, &dir.join("read-token").display().to_string())
        .replace("../../alerts/", &format!("{ROOT}/alerts/"));
    std::fs::write(&config, text).unwrap();
    run(
        "promtool",
        "apt-get install prometheus",
        &["check", "config", &config.display().to_string()],
        None,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_shipped_config_passes_check_config() {
    for file in [
        "deploy/kustomize/base/tenantwatch.toml",
        "deploy/kustomize/overlays/sidecar/tenantwatch.toml",
        "deploy/container.toml",
        "tenantwatch.example.toml",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tenantwatch"))
            .args(["check-config", &format!("{ROOT}/{file}")])
            .env("PGPASSWORD", "from-a-secret")
            .env("TENANTWATCH_AUTH_TOKEN", "from-a-secret")
            .env("TENANTWATCH_READ_TOKEN", "from-a-secret")
            .env("POD_NAME", "postgres-0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The sidecar names its target after its pod (`${POD_NAME}`, from the
/// downward API), so shards and the two pods of a rollout never share one.
#[test]
fn the_sidecar_names_its_target_after_its_pod() {
    let config = format!("{ROOT}/deploy/kustomize/overlays/sidecar/tenantwatch.toml");
    let check = |pod: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tenantwatch"));
        command
            .args(["check-config", &config])
            .env("PGPASSWORD", "from-a-secret")
            .env("TENANTWATCH_AUTH_TOKEN", "from-a-secret")
            .env("TENANTWATCH_READ_TOKEN", "from-a-secret")
            .env_remove("POD_NAME");
        if let Some(pod) = pod {
            command.env("POD_NAME", pod);
        }
        command.output().unwrap()
    };
    let out = check(Some("postgres-1"));
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("target postgres-1:"), "{summary}");
    let out = check(None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("POD_NAME is not set"), "{stderr}");
    let statefulset = std::fs::read_to_string(format!(
        "{ROOT}/deploy/kustomize/overlays/sidecar/statefulset.yaml"
    ))
    .unwrap();
    assert!(
        statefulset.contains("- name: POD_NAME\n              valueFrom:\n                fieldRef:\n                  fieldPath: metadata.name"),
        "the sidecar container does not get POD_NAME from the downward API"
    );
}

#[test]
fn a_shipped_non_loopback_config_without_a_token_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantwatch"))
        .args([
            "check-config",
            &format!("{ROOT}/deploy/kustomize/base/tenantwatch.toml"),
        ])
        .env("PGPASSWORD", "from-a-secret")
        .env_remove("TENANTWATCH_AUTH_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.listen"), "{stderr}");
}

#[test]
fn the_image_and_the_unit_run_unprivileged() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/deploy/Dockerfile")).unwrap();
    assert_eq!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")),
        2,
        "multi-stage"
    );
    assert!(dockerfile.contains("AS build") && dockerfile.contains("COPY --from=build"));
    assert!(dockerfile.contains("\nUSER 10001:10001\n"), "non-root");
    let unit =
        std::fs::read_to_string(format!("{ROOT}/deploy/systemd/tenantwatch.service")).unwrap();
    for line in [
        "User=tenantwatch",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "RestartPreventExitStatus=64",
        "SystemCallFilter=@system-service",
        "SystemCallArchitectures=native",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictSUIDSGID=yes",
        "UMask=0077",
    ] {
        assert!(unit.contains(line), "the unit lacks {line}");
    }
}

/// The standalone overlay shares rate limits through its own Redis: the
/// Deployment's environment turns the base config's backend to Redis, and
/// the result passes check-config.
#[test]
fn the_standalone_overlay_shares_rate_limits_through_its_redis() {
    let manifests = run(
        "kubectl",
        "apt-get install kubernetes-client",
        &["kustomize", "deploy/kustomize/overlays/standalone"],
        None,
    );
    assert!(manifests.contains("name: tenantwatch-redis\n"), "no Redis");
    assert!(
        manifests.contains("kind: NetworkPolicy\n"),
        "no NetworkPolicy"
    );
    let deployment = std::fs::read_to_string(format!(
        "{ROOT}/deploy/kustomize/overlays/standalone/deployment.yaml"
    ))
    .unwrap();
    let mut env = Vec::new();
    let mut lines = deployment.lines();
    while let Some(line) = lines.next() {
        if let Some(name) = line.trim().strip_prefix("- name: TENANTWATCH__") {
            let value = lines.next().unwrap().trim();
            let value = value.strip_prefix("value: ").unwrap().trim_matches('"');
            env.push((format!("TENANTWATCH__{name}"), value.to_string()));
        }
    }
    assert!(
        env.iter()
            .any(|(k, v)| k == "TENANTWATCH__RATELIMIT__REDIS__URL"
                && v == "redis://tenantwatch-redis:6379"),
        "{env:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tenantwatch"))
        .args([
            "check-config",
            &format!("{ROOT}/deploy/kustomize/base/tenantwatch.toml"),
        ])
        .env("PGPASSWORD", "from-a-secret")
        .env("TENANTWATCH_AUTH_TOKEN", "from-a-secret")
        .env("TENANTWATCH_READ_TOKEN", "from-a-secret")
        .envs(env)
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(summary.contains("rate limits: redis, shared"), "{summary}");
}

/// The standalone overlay is highly available: two replicas sharing the
/// fleet view through Redis, rolled one at a time with none taken away
/// before its successor is ready, spread over nodes and zones, a
/// PodDisruptionBudget, and no ReadWriteOnce volume (its shared state is
/// in Redis, docs/deploy.md says what a restart loses).
#[test]
fn the_standalone_overlay_is_highly_available() {
    let manifests = run(
        "kubectl",
        "apt-get install kubernetes-client",
        &["kustomize", "deploy/kustomize/overlays/standalone"],
        None,
    );
    let deployment = std::fs::read_to_string(format!(
        "{ROOT}/deploy/kustomize/overlays/standalone/deployment.yaml"
    ))
    .unwrap();
    for needed in [
        "replicas: 2\n",
        "type: RollingUpdate\n",
        "maxUnavailable: 0\n",
        "topologySpreadConstraints:\n",
        "topologyKey: kubernetes.io/hostname\n",
        "name: TENANTWATCH__RATELIMIT__BACKEND\n              value: redis\n",
        "name: TENANTWATCH__RATELIMIT__REDIS__EXPECTED_INSTANCES\n              value: \"2\"\n",
        "path: /readyz\n",
        "emptyDir:",
    ] {
        assert!(
            deployment.contains(needed),
            "the standalone Deployment lacks {needed:?}"
        );
    }
    assert!(!manifests.contains("kind: PersistentVolumeClaim"));
    assert!(manifests.contains("kind: PodDisruptionBudget\n"));
    assert!(manifests.contains("minAvailable: 1\n"));
}

/// The sidecar keeps `[state]` on a volume that outlives the pod (so a
/// redeploy does not forget flags and tightened quotas), and the systemd
/// unit gives it a writable directory.
#[test]
fn shipped_configs_keep_state_on_a_lasting_volume() {
    for (config, workload, claim) in [(
        "deploy/kustomize/overlays/sidecar/tenantwatch.toml",
        "deploy/kustomize/overlays/sidecar/statefulset.yaml",
        "name: tenantwatch-state\n      spec:",
    )] {
        let text = std::fs::read_to_string(format!("{ROOT}/{config}")).unwrap();
        let file: tenantwatch::config::Settings = toml::from_str(&text).unwrap();
        assert_eq!(
            file.state.file.as_deref(),
            Some(std::path::Path::new("/var/lib/tenantwatch/state.json")),
            "{config}"
        );
        let workload_text = std::fs::read_to_string(format!("{ROOT}/{workload}")).unwrap();
        assert!(
            workload_text.contains("mountPath: /var/lib/tenantwatch\n"),
            "{workload} mounts no volume for the state file"
        );
        assert!(
            workload_text.contains(claim),
            "{workload}: the state volume is not a claim"
        );
    }
    let unit =
        std::fs::read_to_string(format!("{ROOT}/deploy/systemd/tenantwatch.service")).unwrap();
    assert!(unit.contains("StateDirectory=tenantwatch"));
}

/// What a first `docker run -p` or `kubectl apply` trips over: the image's
/// config listens where a published port reaches it, each workload runs
/// under the runtime's seccomp profile, and the StatefulSet's governing
/// Service is one the overlay ships.
#[test]
fn the_image_listens_everywhere_and_the_workloads_are_confined() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY deploy/container.toml /etc/tenantwatch/tenantwatch.toml"));
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/container.toml")).unwrap();
    let file: tenantwatch::config::Settings = toml::from_str(&text).unwrap();
    assert!(file.server.listen.ip().is_unspecified());
    assert!(
        file.ingest
            .udp_listen
            .is_some_and(|a| a.ip().is_unspecified())
    );
    for workload in [
        "deploy/kustomize/overlays/standalone/deployment.yaml",
        "deploy/kustomize/overlays/sidecar/statefulset.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{ROOT}/{workload}")).unwrap();
        assert!(
            text.contains("seccompProfile:\n          type: RuntimeDefault"),
            "{workload} has no pod seccompProfile"
        );
    }
    let statefulset = std::fs::read_to_string(format!(
        "{ROOT}/deploy/kustomize/overlays/sidecar/statefulset.yaml"
    ))
    .unwrap();
    let service =
        std::fs::read_to_string(format!("{ROOT}/deploy/kustomize/base/service.yaml")).unwrap();
    let governing = statefulset
        .lines()
        .find_map(|l| l.trim().strip_prefix("serviceName: "))
        .unwrap();
    assert!(
        service.contains(&format!("  name: {governing}\n")),
        "serviceName {governing} is not the base Service"
    );
}

/// UDP carries no token, so who may send events is the network's to say:
/// in both overlays a NetworkPolicy admits tenantwatch's ports only from
/// pods with the documented labels (`tenantwatch.io/client: "true"` for
/// events and checks, `tenantwatch.io/scraper: "true"` for /metrics), and
/// a shipped config that binds UDP off loopback either names its senders'
/// networks or admits any sender only where such a policy guards it.
#[test]
fn tenantwatch_ports_admit_only_labelled_pods() {
    const CLIENT: &str = "tenantwatch.io/client: \"true\"";
    const SCRAPER: &str = "tenantwatch.io/scraper: \"true\"";
    for (overlay, config) in [
        ("standalone", "deploy/kustomize/base/tenantwatch.toml"),
        (
            "sidecar",
            "deploy/kustomize/overlays/sidecar/tenantwatch.toml",
        ),
    ] {
        let manifests = run(
            "kubectl",
            "apt-get install kubernetes-client",
            &["kustomize", &format!("deploy/kustomize/overlays/{overlay}")],
            None,
        );
        let policies: Vec<&str> = manifests
            .split("\n---\n")
            .filter(|o| o.contains("kind: NetworkPolicy\n"))
            .collect();
        assert_eq!(policies.len(), 1, "{overlay}: one NetworkPolicy");
        let policy = policies[0];
        let ingress = policy
            .split_once("\n  ingress:\n")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("{overlay}: the policy has no ingress rules"));
        // Its rules: `  - ` items, up to the next key of `spec`.
        let mut rules: Vec<String> = Vec::new();
        for line in ingress.lines() {
            if let Some(item) = line.strip_prefix("  - ") {
                rules.push(format!("{item}\n"));
            } else if line.starts_with("    ") {
                rules.last_mut().unwrap().push_str(&format!("{line}\n"));
            } else {
                break;
            }
        }
        let mut udp_rules = 0;
        for rule in &rules {
            let udp = rule.contains("port: 8125");
            let http = rule.contains("port: 9645");
            if udp {
                udp_rules += 1;
                assert!(
                    rule.contains(CLIENT),
                    "{overlay}: 8125/UDP open beyond labelled pods:\n{rule}"
                );
            }
            if http {
                assert!(
                    rule.contains(CLIENT) || rule.contains(SCRAPER),
                    "{overlay}: 9645/TCP open beyond labelled pods:\n{rule}"
                );
            }
            if !udp && !http {
                // Anything else open is PostgreSQL's own port (sidecar).
                assert!(
                    rule.contains("port: 5432") && !rule.contains("port: 9645"),
                    "{overlay}: {rule}"
                );
            }
        }
        assert_eq!(udp_rules, 1, "{overlay}: {policy}");
        let text = std::fs::read_to_string(format!("{ROOT}/{config}")).unwrap();
        let file: tenantwatch::config::Settings = toml::from_str(&text).unwrap();
        assert!(file.ingest.udp_allow_any, "{config}");
    }
    // The plain image has no policy around it: it names private networks.
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/container.toml")).unwrap();
    let file: tenantwatch::config::Settings = toml::from_str(&text).unwrap();
    assert!(!file.ingest.udp_allow_any);
    let public: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    assert!(file.ingest.udp_allow.iter().all(|n| !n.contains(public)));
    assert!(
        file.ingest
            .udp_allow
            .iter()
            .any(|n| n.contains("172.17.0.1".parse().unwrap()))
    );
}
