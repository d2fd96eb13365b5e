//! `bench --templates N`: the cost of one run's render.

/// The cost of one run's render: plain paths in-process, and jq programs in the
/// sandbox's worker processes (one at a time, and two workers in parallel). Prints one
/// line per case.
pub(super) async fn templates(n: usize, exe: std::path::PathBuf) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::time::Instant;
    use switchyard::template::sandbox::Sandbox;
    use switchyard::template::Context;
    let n = n.clamp(1, 1_000_000);
    let event: switchyard::model::TriggerEvent = serde_json::from_value(serde_json::json!({
        "run": {"id": "r_bench"},
        "action": {"identifier": "deploy", "invocationMethod": {}},
        "inputs": {"service": "checkout", "version": "1.4.2", "replicas": 3, "tags": ["a", "b"]},
        "trigger": {"by": {"user": {"email": "dev@acme.io"}}}
    }))?;
    let secrets = switchyard::template::secrets_val(&serde_json::Map::new());
    let plain: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({
            "type": "WEBHOOK", "url": "https://deploy.example/{{ .inputs.service }}",
            "body": {"version": "{{ .inputs.version }}", "run": "{{ .run.id }}",
                     "by": "{{ .trigger.by.user.email }}", "n": "{{ .inputs.replicas }}"}
        }))?;
    let jq: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
        serde_json::json!({
            "type": "WEBHOOK", "url": "https://deploy.example/{{ .inputs.service | ascii_downcase }}",
            "body": {"version": "{{ .inputs.version }}", "tags": "{{ .inputs.tags | join(\",\") }}",
                     "n": "{{ .inputs.replicas * 2 }}", "run": "{{ .run.id }}"}
        }),
    )?;
    type Template = serde_json::Map<String, serde_json::Value>;
    /// `count` renders of `template`, each with its run's context built as the
    /// pipeline builds it.
    async fn renders(
        sandbox: Arc<Sandbox>,
        template: Arc<Template>,
        event: Arc<switchyard::model::TriggerEvent>,
        secrets: jaq_json::Val,
        count: usize,
    ) -> anyhow::Result<()> {
        for _ in 0..count {
            let ctx = Context::for_event(&event, &secrets);
            sandbox
                .render_object(&template, &ctx, "invocationMethod")
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        Ok(())
    }
    let cfg = switchyard::config::TemplatesConfig::default();
    let sandbox = Arc::new(Sandbox::new(&cfg, exe));
    let (plain, jq, event) = (Arc::new(plain), Arc::new(jq), Arc::new(event));
    let run = |template: &Arc<Template>, count: usize| {
        renders(
            sandbox.clone(),
            template.clone(),
            event.clone(),
            secrets.clone(),
            count,
        )
    };
    // Warm up: start the workers and compile the programs.
    run(&jq, cfg.workers * 2).await?;
    let time = |label: &str, started: Instant, count: usize| {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "templates {label}: {count} renders in {secs:.2} s = {:.1} µs/render, {:.0} renders/s",
            secs * 1e6 / count as f64,
            count as f64 / secs
        );
    };
    let started = Instant::now();
    run(&plain, n).await?;
    time("plain paths, in-process", started, n);
    let started = Instant::now();
    run(&jq, n).await?;
    time("jq programs, sandbox, 1 at a time", started, n);
    let started = Instant::now();
    let tasks: Vec<_> = (0..cfg.workers)
        .map(|_| tokio::spawn(run(&jq, n / cfg.workers)))
        .collect();
    for t in tasks {
        t.await??;
    }
    time(
        &format!("jq programs, sandbox, {} workers in parallel", cfg.workers),
        started,
        n / cfg.workers * cfg.workers,
    );
    Ok(())
}
