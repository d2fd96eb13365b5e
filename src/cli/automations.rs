//! `switchyard automations validate DIR` and `switchyard automations test`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use switchyard::automations::definition::{self, EventType};
use switchyard::automations::eval::{Evaluator, Verdict};
use switchyard::automations::event;
use switchyard::config::Config;

/// Check every definition in `dir`; list the problems (exit 78) or count them (exit 0).
pub fn validate(dir: &Path) -> ExitCode {
    match definition::load_dir(dir) {
        Ok(list) => {
            println!("{} automations valid in {}", list.len(), dir.display());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("{} problems", problems.len());
            ExitCode::from(switchyard::config::EXIT_CONFIG as u8)
        }
    }
}

/// Dry run: would `automation` fire on the event in `event_file` (Port's automation event
/// object: `{action, resourceType, context, diff, trigger}`)? Prints the verdict and,
/// when it fires, the trigger event it would emit. Exit 0 when it fires, 1 when not.
pub async fn test(
    cfg: &Config,
    dir: Option<&Path>,
    automation: &str,
    event_file: &Path,
) -> anyhow::Result<bool> {
    let dir = match dir {
        Some(d) => d.to_owned(),
        None => cfg
            .automations
            .dir
            .as_deref()
            .map(Into::into)
            .ok_or_else(|| anyhow::anyhow!("no definitions: pass --dir or set automations.dir"))?,
    };
    let list = definition::load_dir(&dir)
        .map_err(|p| anyhow::anyhow!("{} does not load:\n  {}", dir.display(), p.join("\n  ")))?;
    let set = definition::Automations::from_list(list);
    let a = set.get(automation).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "no automation {automation:?} in {} (there are: {})",
            dir.display(),
            set.iter()
                .map(|a| a.identifier.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let text = std::fs::read(event_file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", event_file.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", event_file.display()))?;
    let ev = event::changelog_change(&v)
        .map_err(|e| anyhow::anyhow!("{}: {e}", event_file.display()))?;
    if !a.publish {
        println!("does not fire: the automation is disabled (publish: false)");
        return Ok(false);
    }
    if !ev.matches(&a) {
        let listens = match a.event {
            EventType::RunCreated | EventType::RunUpdated | EventType::AnyRunChange => {
                format!("action {:?}", a.action.as_deref().unwrap_or_default())
            }
            _ => format!("blueprint {:?}", a.blueprint.as_deref().unwrap_or_default()),
        };
        println!(
            "does not fire: the event is {} {} on {:?}; the automation listens to {} on {listens}",
            v["resourceType"].as_str().unwrap_or_default(),
            v["action"].as_str().unwrap_or_default(),
            ev.scope.as_deref().unwrap_or_default(),
            a.event.name(),
        );
        return Ok(false);
    }
    let sandbox = Arc::new(switchyard::template::sandbox::Sandbox::new(
        &cfg.templates,
        std::env::current_exe()?,
    ));
    let verdicts = Evaluator::new(sandbox)
        .evaluate(std::slice::from_ref(&a), &ev)
        .await;
    match verdicts.into_iter().next().map(|(_, v)| v) {
        Some(Verdict::Fire) => {
            let source = format!("test/{}", event_file.display());
            let run_id = event::run_id(&a.identifier, &source, ev.hops + 1);
            let trigger = event::trigger_event(&a, &ev, &run_id, &switchyard::model::now_rfc3339());
            println!("fires; the trigger event it would emit:");
            println!(
                "{}",
                serde_json::to_string_pretty(&trigger).expect("JSON values always serialize")
            );
            Ok(true)
        }
        Some(Verdict::Skip) => {
            println!("does not fire: the condition is false");
            Ok(false)
        }
        Some(Verdict::Error(why)) => {
            println!("does not fire: the condition is in error: {why}");
            Ok(false)
        }
        None => unreachable!("one verdict per candidate"),
    }
}
