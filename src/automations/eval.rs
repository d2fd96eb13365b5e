//! Conditions: each expression of a matching automation runs against the event object in
//! the template sandbox (worker processes under CPU, memory and output budgets), so no
//! change can freeze or exhaust the engine. One sandbox request serves every candidate
//! automation of a change; when it fails, each automation is evaluated alone so the
//! error is charged to the right one.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::definition::{Automation, Combinator};
use super::event::ChangeEvent;
use crate::template::sandbox::{RenderError, Sandbox};
use crate::template::Context;

/// The verdict on one automation for one change.
#[derive(Debug)]
pub enum Verdict {
    Fire,
    Skip,
    /// The condition is in error (not a boolean, a jq error, a budget): no fire.
    Error(String),
}

pub struct Evaluator {
    sandbox: Arc<Sandbox>,
}

impl Evaluator {
    pub fn new(sandbox: Arc<Sandbox>) -> Self {
        Evaluator { sandbox }
    }

    /// The verdict of every automation in `candidates` (which match `ev` already).
    pub async fn evaluate(
        &self,
        candidates: &[Arc<Automation>],
        ev: &ChangeEvent,
    ) -> Vec<(Arc<Automation>, Verdict)> {
        let ctx = Context::plain(&ev.object);
        let mut template = Map::new();
        for (i, a) in candidates.iter().enumerate() {
            for (j, e) in a
                .condition
                .iter()
                .flat_map(|c| c.expressions.iter())
                .enumerate()
            {
                template.insert(format!("{i}.{j}"), Value::String(format!("{{{{ {e} }}}}")));
            }
        }
        let together = if template.is_empty() {
            Some(Map::new())
        } else {
            self.sandbox
                .render_object(&template, &ctx, "condition")
                .await
                .ok()
        };
        let mut out = Vec::with_capacity(candidates.len());
        for (i, a) in candidates.iter().enumerate() {
            let verdict = match &together {
                Some(values) => judge(a, |j| values.get(&format!("{i}.{j}")).cloned()),
                None => self.alone(a, &ctx).await,
            };
            out.push((a.clone(), verdict));
        }
        out
    }

    async fn alone(&self, a: &Automation, ctx: &Context) -> Verdict {
        let Some(c) = &a.condition else {
            return Verdict::Fire;
        };
        let template: Map<String, Value> = c
            .expressions
            .iter()
            .enumerate()
            .map(|(j, e)| (j.to_string(), Value::String(format!("{{{{ {e} }}}}"))))
            .collect();
        match self
            .sandbox
            .render_object(&template, ctx, "trigger.condition.expressions")
            .await
        {
            Ok(values) => judge(a, |j| values.get(&j.to_string()).cloned()),
            Err(RenderError::Template(e) | RenderError::Budget(e)) => Verdict::Error(e.to_string()),
        }
    }
}

/// Combine the values of `a`'s expressions (`value(j)` for expression `j`).
fn judge(a: &Automation, value: impl Fn(usize) -> Option<Value>) -> Verdict {
    let Some(c) = &a.condition else {
        return Verdict::Fire;
    };
    let mut results = Vec::with_capacity(c.expressions.len());
    for (j, e) in c.expressions.iter().enumerate() {
        match value(j) {
            Some(Value::Bool(b)) => results.push(b),
            other => {
                return Verdict::Error(format!(
                    "trigger.condition.expressions[{j}] (`{e}`) yielded {}, not a boolean",
                    other.map_or("nothing".to_owned(), |v| crate::model::truncate(
                        &v.to_string(),
                        200
                    ))
                ))
            }
        }
    }
    let fire = match c.combinator {
        Combinator::And => results.iter().all(|b| *b),
        Combinator::Or => results.iter().any(|b| *b),
    };
    if fire {
        Verdict::Fire
    } else {
        Verdict::Skip
    }
}
