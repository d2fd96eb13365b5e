//! W3C trace context: a `traceparent` header on a trigger record is carried to the
//! backend requests made for its run and to the run's updates on the status topic.
//!
//! The pipeline runs each event's dispatch inside [`scope`]; HTTP exchanges and the KAFKA
//! backend read [`current`] from there, so no backend has to thread it through.

use std::future::Future;

tokio::task_local! {
    static TRACEPARENT: Option<String>;
}

/// The header name, lowercase as on the wire.
pub const HEADER: &str = "traceparent";

/// A valid `traceparent` value from a record's headers (version `00`:
/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero).
pub fn from_headers(headers: &[(String, Option<Vec<u8>>)]) -> Option<String> {
    let (_, v) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(HEADER))?;
    let text = std::str::from_utf8(v.as_deref()?).ok()?.trim();
    valid(text).then(|| text.to_owned())
}

fn valid(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

/// Run `fut` with `traceparent` as the current trace context.
///
/// A plain function, not an `async fn`: an `async fn` would hold `fut` both as its
/// argument and inside the scope, doubling the size of every run's future.
pub fn scope<F: Future>(traceparent: Option<String>, fut: F) -> impl Future<Output = F::Output> {
    TRACEPARENT.scope(traceparent, fut)
}

/// The trace context of the run being dispatched, if its record carried one.
pub fn current() -> Option<String> {
    TRACEPARENT.try_with(Clone::clone).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_traceparents_are_carried() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h = |v: &str| vec![("traceparent".to_owned(), Some(v.as_bytes().to_vec()))];
        assert_eq!(from_headers(&h(ok)).as_deref(), Some(ok));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(from_headers(&h(bad)), None, "{bad}");
        }
    }
}
