//! Rendering a run's `invocationMethod`: plain paths in-process, everything else in the
//! template sandbox, with only the secrets scoped to the run's destination.

use super::*;

impl Inner {
    /// Render the event's `invocationMethod` in the sandbox. An event-chosen `url` is
    /// rendered first, with no secrets: its host decides which secrets the other fields
    /// may read.
    pub(super) async fn render(
        &self,
        reg: &crate::pool::Pooled,
        event: &Arc<TriggerEvent>,
    ) -> Result<Map<String, Value>, BadInput> {
        const PATH: &str = "invocationMethod";
        let raw = &event.action.invocation_method;
        let kind = reg.backend.kind();
        let bad = |e: RenderError| match e {
            RenderError::Template(e) => BadInput::Template(e.to_string()),
            RenderError::Budget(e) => BadInput::TemplateBudget(e.to_string()),
        };
        let mut url = None;
        let mut probe = crate::backends::Request {
            run_id: event.run.id.clone(),
            invocation: Map::new(),
            event: event.clone(),
        };
        // The event's context is converted once; each phase gets its own `.secrets`.
        let base = Context::for_event(event, &jaq_json::Val::obj(Default::default()));
        if let Some(u) = raw.get("url") {
            let only: Map<String, Value> = [("url".to_owned(), u.clone())].into_iter().collect();
            probe.invocation = self
                .sandbox
                .render_object(&only, &base, PATH)
                .await
                .map_err(bad)?;
            url = probe.invocation.get("url").cloned();
        }
        let host = reg.backend.destination(&probe);
        self.secrets
            .check_references(raw, kind, host.as_deref(), PATH)
            .map_err(BadInput::SecretScope)?;
        let ctx = base.with_secrets(self.secrets.visible(kind, host.as_deref()));
        let mut invocation = self
            .sandbox
            .render_object(raw, &ctx, PATH)
            .await
            .map_err(bad)?;
        if let Some(url) = url {
            invocation.insert("url".into(), url);
        }
        Ok(invocation)
    }
}
