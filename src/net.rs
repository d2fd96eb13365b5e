//! HTTP with switchyard's limits, for every peer (backends, the schema registry, Port's
//! API): a body is read up to a cap, never more.

/// Largest response body read; the rest is discarded.
pub const MAX_BODY: usize = 1024 * 1024;

/// Read a response body, at most `max` bytes: a peer cannot make switchyard buffer
/// more. Past `max` the body is cut (and the caller sees a truncated document).
pub async fn read_capped(mut response: reqwest::Response, max: usize) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(body)
}
