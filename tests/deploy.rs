//! The deployment files, checked offline: every Kubernetes manifest and every
//! template of the Helm chart (rendered here with a Go-template engine and
//! Helm's functions the chart uses) parses, has the required fields, and
//! agrees with the binary: flags it really accepts, ports and probes that
//! match its listen addresses, grace periods longer than its drain, secrets
//! and config that exist. The Dockerfiles are checked line by line.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

fn help(subcommand: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lpworker"))
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

fn s<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn str_of<'a>(v: &'a Value, path: &str) -> &'a str {
    s(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string in {v:?}"))
}

/// The value of `--flag=value` in a container's args.
fn flag<'a>(args: &'a [Value], name: &str) -> Option<&'a str> {
    args.iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_mapping()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
}

/// All the checks, on one set of objects (plain manifests or rendered chart).
fn check(objects: &[Value], helps: &HashMap<&str, String>) {
    fn of_kind<'a>(objects: &'a [Value], k: &'static str) -> impl Iterator<Item = &'a Value> {
        objects.iter().filter(move |o| o["kind"] == k)
    }
    let kind = |k: &'static str| of_kind(objects, k);
    for o in objects {
        assert!(
            o["apiVersion"].is_string() && o["kind"].is_string(),
            "{o:?}"
        );
        assert!(!str_of(o, "metadata.name").is_empty());
    }
    let secrets: Vec<_> = kind("Secret").collect();
    let configmaps: Vec<_> = kind("ConfigMap").collect();
    assert!(!kind("Deployment").collect::<Vec<_>>().is_empty());
    for d in kind("Deployment") {
        let name = str_of(d, "metadata.name");
        let pod = s(d, "spec.template");
        assert!(
            selects(s(d, "spec.selector.matchLabels"), s(pod, "metadata.labels")),
            "{name}: selector"
        );
        assert_eq!(
            s(pod, "spec.securityContext.runAsNonRoot").as_bool(),
            Some(true),
            "{name}: non-root"
        );
        let c = s(pod, "spec.containers.0");
        let args = c["args"].as_sequence().unwrap();
        let sub = args[0].as_str().unwrap();
        let help = &helps[sub];
        for a in args.iter().skip(1).filter_map(Value::as_str) {
            let f = a.split('=').next().unwrap();
            assert!(
                help.contains(&format!("{f} "))
                    || help.contains(&format!("{f}\n"))
                    || help.contains(&format!("{f} <")),
                "{name}: `lpworker {sub}` has no flag {f}"
            );
        }
        for env in c["env"].as_sequence().into_iter().flatten() {
            if let Some(r) = env.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
                let (sn, key) = (str_of(r, "name"), str_of(r, "key"));
                assert!(
                    secrets
                        .iter()
                        .any(|x| x["metadata"]["name"] == sn && !x["stringData"][key].is_null()),
                    "{name}: secret {sn}/{key} missing"
                );
            }
        }
        let grace = s(pod, "spec.terminationGracePeriodSeconds")
            .as_u64()
            .expect("grace period");
        if let Some(drain) = flag(args, "drain-timeout") {
            let pre_stop = s(c, "lifecycle.preStop.sleep.seconds")
                .as_u64()
                .unwrap_or(0);
            assert!(
                grace > drain.parse::<u64>().unwrap() + pre_stop,
                "{name}: grace {grace} <= drain {drain} + preStop {pre_stop}"
            );
        }
        let ports: HashMap<&str, u64> = c["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|p| (str_of(p, "name"), s(p, "containerPort").as_u64().unwrap()))
            .collect();
        match sub {
            "serve" => {
                assert_eq!(
                    ports["grpc"],
                    port_of(flag(args, "addr").unwrap()),
                    "{name}: grpc port"
                );
                assert_eq!(
                    ports["metrics"],
                    port_of(flag(args, "metrics-addr").unwrap())
                );
                assert_eq!(ports["ai-http"], port_of(flag(args, "http-addr").unwrap()));
                assert_eq!(
                    s(c, "readinessProbe.grpc.port").as_u64(),
                    Some(ports["grpc"]),
                    "{name}: readiness probe"
                );
                assert_eq!(
                    s(c, "livenessProbe.grpc.port").as_u64(),
                    Some(ports["grpc"]),
                    "{name}: liveness probe"
                );
                assert!(
                    !s(c, "resources.limits")
                        .get("nvidia.com/gpu")
                        .unwrap_or(&Value::Null)
                        .is_null(),
                    "{name}: GPU limit"
                );
                assert!(
                    !s(pod, "spec.affinity.podAntiAffinity").is_null(),
                    "{name}: anti-affinity"
                );
                // --ai-models points into the mounted ConfigMap, which has that key.
                let models = flag(args, "ai-models").unwrap();
                let mount = c["volumeMounts"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|m| models.starts_with(str_of(m, "mountPath")))
                    .expect("models mount");
                let vol = s(pod, "spec.volumes")
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|v| v["name"] == mount["name"])
                    .unwrap();
                let cm = str_of(vol, "configMap.name");
                let file = models.rsplit('/').next().unwrap();
                assert!(
                    configmaps
                        .iter()
                        .any(|m| m["metadata"]["name"] == cm && m["data"][file].is_string()),
                    "{name}: {cm}/{file}"
                );
            }
            "orchestrator" => {
                assert_eq!(
                    s(d, "spec.replicas").as_u64(),
                    Some(1),
                    "the ticket store is never shared"
                );
                assert_eq!(str_of(d, "spec.strategy.type"), "Recreate");
                assert_eq!(ports["gateway"], port_of(flag(args, "http-addr").unwrap()));
                let datadir = flag(args, "datadir").unwrap();
                let mount = c["volumeMounts"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|m| m["mountPath"] == datadir)
                    .expect("datadir mount");
                let vol = s(pod, "spec.volumes")
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|v| v["name"] == mount["name"])
                    .unwrap();
                let claim = str_of(vol, "persistentVolumeClaim.claimName");
                assert!(
                    kind("PersistentVolumeClaim").any(|p| p["metadata"]["name"] == claim),
                    "PVC {claim}"
                );
                if flag(args, "network").is_some_and(|n| n != "offchain") {
                    // On chain: the key and its password are files from a
                    // Secret that exists and holds those keys.
                    for f in ["eth-keystore-path", "eth-password"] {
                        let path = flag(args, f).unwrap_or_else(|| panic!("{name}: --{f}"));
                        let (dir, file) = path.rsplit_once('/').unwrap();
                        let mount = c["volumeMounts"]
                            .as_sequence()
                            .unwrap()
                            .iter()
                            .find(|m| m["mountPath"] == dir)
                            .unwrap_or_else(|| panic!("{name}: nothing mounted at {dir}"));
                        let vol = s(pod, "spec.volumes")
                            .as_sequence()
                            .unwrap()
                            .iter()
                            .find(|v| v["name"] == mount["name"])
                            .unwrap();
                        let secret = str_of(vol, "secret.secretName");
                        let item = vol["secret"]["items"]
                            .as_sequence()
                            .unwrap()
                            .iter()
                            .find(|i| i["path"] == file)
                            .unwrap_or_else(|| panic!("{name}: {file} not projected"));
                        let key = str_of(item, "key");
                        assert!(
                            secrets.iter().any(|x| x["metadata"]["name"] == secret
                                && !x["stringData"][key].is_null()),
                            "{name}: secret {secret}/{key} missing"
                        );
                    }
                    assert!(
                        flag(args, "eth-url").is_some()
                            || c["env"]
                                .as_sequence()
                                .into_iter()
                                .flatten()
                                .any(|e| e["name"] == "LP_ETHURL"),
                        "{name}: no chain URL"
                    );
                    assert_eq!(
                        ports["metrics"],
                        port_of(flag(args, "metrics-addr").unwrap())
                    );
                }
            }
            "attach" => assert!(flag(args, "orch-addr").is_some()),
            other => panic!("unexpected subcommand {other}"),
        }
    }
    for svc in kind("Service") {
        let pods: Vec<_> = kind("Deployment")
            .filter(|d| {
                selects(
                    s(svc, "spec.selector"),
                    s(d, "spec.template.metadata.labels"),
                )
            })
            .collect();
        assert!(
            !pods.is_empty(),
            "service {} selects nothing",
            str_of(svc, "metadata.name")
        );
        let names: Vec<&Value> = pods
            .iter()
            .flat_map(|d| {
                s(d, "spec.template.spec.containers.0.ports")
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|p| &p["name"])
            })
            .collect();
        for p in s(svc, "spec.ports").as_sequence().unwrap() {
            assert!(
                names.contains(&&p["targetPort"]),
                "service port {:?} targets no container port",
                p["targetPort"]
            );
        }
    }
    assert!(
        kind("Service").any(|s| s["spec"]["clusterIP"] == "None"),
        "a headless service"
    );
    for pdb in kind("PodDisruptionBudget") {
        assert!(kind("Deployment").any(|d| selects(
            s(pdb, "spec.selector.matchLabels"),
            s(d, "spec.template.metadata.labels")
        )));
    }
    for sm in kind("ServiceMonitor") {
        let svc = kind("Service")
            .find(|v| selects(s(sm, "spec.selector.matchLabels"), &v["metadata"]["labels"]))
            .expect("ServiceMonitor selects a Service");
        let port = &s(sm, "spec.endpoints.0")["port"];
        assert!(s(svc, "spec.ports")
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| &p["name"] == port));
        assert_eq!(str_of(sm, "spec.endpoints.0.path"), "/metrics");
    }
    for cm in &configmaps {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("aiModels.json");
        std::fs::write(
            &models,
            cm["data"]["aiModels.json"].as_str().expect("aiModels.json"),
        )
        .unwrap();
        lpworker::ai::config::load(models.to_str().unwrap()).expect("aiModels.json is valid");
        lpworker::video::VideoProfile::parse_json(
            cm["data"]["profiles.json"].as_str().expect("profiles.json"),
        )
        .expect("profiles.json is valid");
    }
}

fn helps() -> HashMap<&'static str, String> {
    ["serve", "orchestrator", "attach"]
        .into_iter()
        .map(|s| (s, help(s)))
        .collect()
}

#[test]
fn kubernetes_manifests_agree_with_the_binary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut objects = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            objects.extend(docs(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    let kinds: Vec<_> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PersistentVolumeClaim",
        "ConfigMap",
        "Secret",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k}");
    }
    check(&objects, &helps());
}

// --- a Helm renderer: Go templates (gtmpl) with the Helm functions the chart uses ---

fn to_gtmpl(v: &Value) -> gtmpl_value::Value {
    match v {
        Value::Null => gtmpl_value::Value::Nil,
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => n
            .as_i64()
            .map(Into::into)
            .unwrap_or_else(|| n.as_f64().unwrap().into()),
        Value::String(s) => s.clone().into(),
        Value::Sequence(a) => gtmpl_value::Value::Array(a.iter().map(to_gtmpl).collect()),
        Value::Mapping(m) => gtmpl_value::Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().unwrap().to_string(), to_gtmpl(v)))
                .collect(),
        ),
        Value::Tagged(t) => to_gtmpl(&t.value),
    }
}

fn text_arg(v: &gtmpl_value::Value) -> String {
    match v {
        gtmpl_value::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn quote(args: &[gtmpl_value::Value]) -> Result<gtmpl_value::Value, gtmpl_value::FuncError> {
    Ok(format!("{:?}", text_arg(&args[0])).into())
}

fn indent(args: &[gtmpl_value::Value]) -> Result<gtmpl_value::Value, gtmpl_value::FuncError> {
    let n: usize = text_arg(&args[0])
        .parse()
        .map_err(|_| gtmpl_value::FuncError::Generic("indent width".into()))?;
    let pad = " ".repeat(n);
    Ok(text_arg(&args[1])
        .trim_end()
        .lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
        .into())
}

fn add(args: &[gtmpl_value::Value]) -> Result<gtmpl_value::Value, gtmpl_value::FuncError> {
    let mut total = 0i64;
    for a in args {
        total += text_arg(a)
            .parse::<i64>()
            .map_err(|_| gtmpl_value::FuncError::Generic("add takes integers".into()))?;
    }
    Ok(total.into())
}

/// Renders every template with `values` merged over the chart's values.yaml.
fn render_chart(release: &str, overrides: &str) -> Vec<Value> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/lpworker");
    let mut values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    fn merge(base: &mut Value, over: &Value) {
        match (base, over) {
            (Value::Mapping(b), Value::Mapping(o)) => {
                for (k, v) in o {
                    match b.get_mut(k) {
                        Some(bv) => merge(bv, v),
                        None => {
                            b.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            (b, o) => *b = o.clone(),
        }
    }
    if !overrides.is_empty() {
        merge(&mut values, &serde_yaml::from_str(overrides).unwrap());
    }
    let chart_meta: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(chart_meta["apiVersion"], "v2");
    let mut root = serde_yaml::Mapping::new();
    root.insert("Values".into(), values);
    let mut rel = serde_yaml::Mapping::new();
    rel.insert("Name".into(), release.into());
    root.insert("Release".into(), Value::Mapping(rel));
    let context = gtmpl::Context::from(to_gtmpl(&Value::Mapping(root)));
    let mut objects = Vec::new();
    for entry in std::fs::read_dir(chart.join("templates")).unwrap() {
        let path = entry.unwrap().path();
        let mut t = gtmpl::Template::default();
        t.add_func("quote", quote);
        t.add_func("indent", indent);
        t.add_func("add", add);
        t.parse(std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out = t
            .render(&context)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        objects.extend(docs(&out));
    }
    objects
}

#[test]
fn helm_chart_renders_objects_that_agree_with_the_binary() {
    let helps = helps();
    let objects = render_chart("lp", "");
    check(&objects, &helps);
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "lp-attach"),
        "attach is off by default"
    );

    // Values flow through: replicas, GPUs, drain and grace period, the attach variant.
    let objects = render_chart("prod", "serve:\n  replicas: 5\n  gpus: 2\n  drainTimeout: 120\nattach:\n  enabled: true\norchestrator:\n  enabled: false\n");
    check(&objects, &helps);
    let serve = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "prod-serve" && o["kind"] == "Deployment")
        .unwrap();
    assert_eq!(s(serve, "spec.replicas").as_u64(), Some(5));
    assert_eq!(
        s(serve, "spec.template.spec.containers.0.resources.limits")["nvidia.com/gpu"].as_u64(),
        Some(2)
    );
    assert_eq!(
        s(serve, "spec.template.spec.terminationGracePeriodSeconds").as_u64(),
        Some(135)
    );
    assert!(objects
        .iter()
        .any(|o| o["metadata"]["name"] == "prod-attach"));
    assert!(
        !objects.iter().any(|o| o["kind"] == "PersistentVolumeClaim"),
        "orchestrator disabled"
    );

    // On chain: the key Secret, its mounts and the chain URL agree with the
    // flags the binary takes (checked in `check`).
    let objects = render_chart(
        "chain",
        "orchestrator:\n  network: arbitrum-one-mainnet\n  pricePerUnit: 1200\n  eth:\n    keystore: '{\"address\": \"00\"}'\n    password: pw\n",
    );
    check(&objects, &helps);
    assert!(objects
        .iter()
        .any(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "chain-orchestrator-eth"));
    let orch = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "chain-orchestrator")
        .unwrap();
    let args = orch["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap();
    assert!(
        args.iter()
            .any(|a| a == "--eth-keystore-path=/keys/keystore.json"),
        "{args:?}"
    );
    assert!(args.iter().any(|a| a == "--network=arbitrum-one-mainnet"));

    // CPU-only: no GPU requests at all.
    let objects = render_chart("cpu", "image:\n  tag: cpu\nserve:\n  gpus: 0\n");
    let serve = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "cpu-serve" && o["kind"] == "Deployment")
        .unwrap();
    assert!(s(serve, "spec.template.spec.containers.0.resources.limits")
        .get("nvidia.com/gpu")
        .is_none());
}

#[test]
fn dockerfiles_have_the_key_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let serve_help = help("serve");
    for (file, gpu) in [("Dockerfile.cuda", true), ("Dockerfile", false)] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let froms: Vec<_> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(froms.len(), 2, "{file}: multi-stage");
        assert!(froms[0].ends_with(" AS build"), "{file}");
        if gpu {
            assert!(
                froms[0].contains("nvidia/cuda:") && froms[0].contains("-devel-"),
                "{file}: devel base"
            );
            assert!(
                froms[1].contains("nvidia/cuda:") && froms[1].contains("-runtime-"),
                "{file}: runtime base"
            );
            assert!(
                text.contains("cargo build --release --locked --features nvidia"),
                "{file}: nvidia feature"
            );
            assert!(
                text.contains("NVIDIA_DRIVER_CAPABILITIES=compute,video,utility"),
                "{file}"
            );
        } else {
            assert!(text.contains("cargo build --release --locked"), "{file}");
        }
        assert!(
            text.contains("libonnxruntime"),
            "{file}: ONNX Runtime library"
        );
        assert!(
            text.contains("libavcodec"),
            "{file}: FFmpeg runtime libraries"
        );
        let user = text
            .lines()
            .find(|l| l.starts_with("USER "))
            .expect("a USER line");
        assert!(
            !user.contains("root") && !user.contains(" 0"),
            "{file}: non-root"
        );
        assert!(
            text.contains("HEALTHCHECK") && text.contains(r#""lpworker", "health""#),
            "{file}: gRPC health check"
        );
        let cmd = text.lines().find(|l| l.starts_with("CMD ")).unwrap();
        for f in cmd.split('"').filter(|p| p.starts_with("--")) {
            assert!(serve_help.contains(f), "{file}: serve has no {f}");
        }
        let expose = text.lines().find(|l| l.starts_with("EXPOSE ")).unwrap();
        assert!(
            expose.contains("50051") && expose.contains("9095") && expose.contains("8000"),
            "{file}: {expose}"
        );
    }
}
