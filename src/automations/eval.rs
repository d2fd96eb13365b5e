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
        let exprs: Vec<&str> = candidates
            .iter()
            .flat_map(|a| a.condition.iter().flat_map(|c| c.expressions.iter()))
            .map(String::as_str)
            .collect();
        let together = if exprs.is_empty() {
            Some(Vec::new())
        } else {
            self.run(&exprs, &ctx, "condition").await.ok()
        };
        let mut offset = 0;
        let mut out = Vec::with_capacity(candidates.len());
        for a in candidates {
            let n = a.condition.as_ref().map_or(0, |c| c.expressions.len());
            let verdict = match &together {
                Some(values) => judge(a, |j| values.get(offset + j).cloned()),
                None => self.alone(a, &ctx).await,
            };
            offset += n;
            out.push((a.clone(), verdict));
        }
        out
    }

    async fn alone(&self, a: &Automation, ctx: &Context) -> Verdict {
        let Some(c) = &a.condition else {
            return Verdict::Fire;
        };
        let exprs: Vec<&str> = c.expressions.iter().map(String::as_str).collect();
        match self.run(&exprs, ctx, "trigger.condition.expressions").await {
            Ok(values) => judge(a, |j| values.get(j).cloned()),
            Err(RenderError::Template(e) | RenderError::Budget(e)) => Verdict::Error(e.to_string()),
        }
    }

    /// The first output (or null) of each expression, in one sandbox round trip: one jq
    /// program per [`CHUNK`] expressions (each compiled once and cached; a long `,` chain
    /// would nest as deep as it is long, and jaq recurses on it).
    async fn run(
        &self,
        exprs: &[&str],
        ctx: &Context,
        field: &str,
    ) -> Result<Vec<Value>, RenderError> {
        let mut template = Map::new();
        for (k, chunk) in exprs.chunks(CHUNK).enumerate() {
            // Newlines end a trailing `# comment` inside an expression.
            let items: Vec<String> = chunk
                .iter()
                .map(|e| format!("([({e}\n)] | .[0])"))
                .collect();
            template.insert(
                format!("{k:04}"),
                Value::String(format!("{{{{ [{}] }}}}", items.join(", "))),
            );
        }
        let rendered = self.sandbox.render_object(&template, ctx, field).await?;
        let mut out = Vec::with_capacity(exprs.len());
        for (_, v) in rendered {
            match v {
                Value::Array(values) => out.extend(values),
                other => out.push(other),
            }
        }
        if out.len() != exprs.len() {
            return Err(RenderError::Template(crate::template::TemplateError {
                field: field.to_owned(),
                message: format!("{} values for {} expressions", out.len(), exprs.len()),
            }));
        }
        Ok(out)
    }
}

/// Expressions per jq program. jaq recurses on a `,` chain as deep as it is long: a
/// program of 100 overflowed the worker's stack (SIGSEGV) in the release build; 16 ran
/// 10,000 changes clean. 8 leaves room for debug builds and long expressions.
const CHUNK: usize = 8;

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
