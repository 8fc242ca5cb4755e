//! CRI's `identity_token`: a refresh token (Docker's `IdentityToken`, what
//! `docker login` stores for registries with OAuth2), which is not sent to
//! the registry itself but exchanged at the registry's token realm for a
//! short-lived access token, as containerd and CRI-O do:
//!
//! ```text
//! GET  /v2/                      → 401, WWW-Authenticate: Bearer realm=R,service=S
//! POST R  grant_type=refresh_token&refresh_token=T&service=S&scope=repository:NAME:pull&client_id=vmpod
//!                                → {"access_token": "..."}
//! ```

use std::time::Duration;

use super::error::PullError;

/// A token response bigger than this is not a token response.
const MAX_RESPONSE: usize = 1 << 20;
/// What the token server sees as the client, as `docker` sends its own.
const CLIENT_ID: &str = "vmpod";

/// The `Bearer` challenge of a `WWW-Authenticate` header: (realm, service).
pub fn parse_challenge(header: &str) -> Option<(String, String)> {
    let rest = header.trim();
    let (scheme, params) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = String::new();
    let mut s = params.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        match key.as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = value.to_string(),
            _ => {}
        }
        s = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some((realm?, service))
}

/// Exchanges `refresh_token` for an access token for pulling `repository`
/// from `host`.
pub async fn exchange(
    host: &str,
    plain_http: bool,
    skip_verify: bool,
    timeout: Duration,
    repository: &str,
    refresh_token: &str,
) -> Result<String, PullError> {
    let auth = |detail: String| PullError::Auth {
        registry: host.to_string(),
        detail,
    };
    let unreachable = |detail: String| PullError::Registry {
        registry: host.to_string(),
        detail,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .danger_accept_invalid_certs(skip_verify)
        .user_agent(concat!("vmpod/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| unreachable(format!("cannot build an HTTP client: {e}")))?;
    let scheme = if plain_http { "http" } else { "https" };
    let ping = client
        .get(format!("{scheme}://{host}/v2/"))
        .send()
        .await
        .map_err(|e| unreachable(format!("cannot reach {host}: {e}")))?;
    let challenge = ping
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_challenge);
    let Some((realm, service)) = challenge else {
        return Err(auth(format!(
            "an identity token needs a token realm, but {host} answered /v2/ with {} and no Bearer challenge",
            ping.status()
        )));
    };
    let scope = format!("repository:{repository}:pull");
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("service", service.as_str()),
        ("scope", scope.as_str()),
        ("client_id", CLIENT_ID),
    ];
    let resp = client
        .post(&realm)
        .form(&form)
        .send()
        .await
        .map_err(|e| unreachable(format!("token realm {realm}: {e}")))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| unreachable(format!("token realm {realm}: {e}")))?;
    if !status.is_success() {
        return Err(auth(format!(
            "the token realm {realm} refused the identity token ({status})"
        )));
    }
    if body.len() > MAX_RESPONSE {
        return Err(auth(format!(
            "the token realm {realm} sent {} bytes",
            body.len()
        )));
    }
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| auth(format!("the token realm {realm} sent no JSON: {e}")))?;
    json.get("access_token")
        .or_else(|| json.get("token"))
        .and_then(serde_json::Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| auth(format!("the token realm {realm} sent no access_token")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="http://127.0.0.1:9/token",service="reg, one",scope="repository:x:pull""#
            ),
            Some(("http://127.0.0.1:9/token".into(), "reg, one".into()))
        );
        assert_eq!(
            parse_challenge("bearer realm=https://auth.example/token, service=registry"),
            Some(("https://auth.example/token".into(), "registry".into()))
        );
        assert_eq!(parse_challenge(r#"Basic realm="x""#), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }
}
