//! How a remotecommand session ends, as the client reads it on the error
//! stream.
//!
//! From v4 on it is a Kubernetes `Status` object in JSON: `Success`, or
//! `Failure` with reason `NonZeroExitCode` and an `ExitCode` cause that
//! kubectl turns into its own exit code. Older versions carry the error's
//! text and nothing on success.

use serde_json::json;

/// The end of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// The command never ran, or the session broke: the message says why.
    Failed(String),
}

/// What goes on the error stream for `outcome`; `None` when nothing does.
pub fn encode(outcome: &Outcome, json_status: bool) -> Option<Vec<u8>> {
    match (outcome, json_status) {
        (Outcome::Exited(0), true) => Some(
            json!({"metadata": {}, "status": "Success"})
                .to_string()
                .into_bytes(),
        ),
        (Outcome::Exited(0), false) => None,
        (Outcome::Exited(code), true) => Some(
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit code {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
            .to_string()
            .into_bytes(),
        ),
        (Outcome::Exited(code), false) => Some(
            format!("command terminated with non-zero exit code: exit code {code}").into_bytes(),
        ),
        (Outcome::Failed(message), true) => Some(
            json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "details": {"causes": [{"message": message}]},
                "code": 500,
            })
            .to_string()
            .into_bytes(),
        ),
        (Outcome::Failed(message), false) => Some(message.clone().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: Option<Vec<u8>>) -> serde_json::Value {
        serde_json::from_slice(&b.unwrap()).unwrap()
    }

    #[test]
    fn exit_codes_in_kubernetes_form() {
        assert_eq!(
            parse(encode(&Outcome::Exited(0), true))["status"],
            "Success"
        );
        let v = parse(encode(&Outcome::Exited(3), true));
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let v = parse(encode(&Outcome::Failed("no such file".into()), true));
        assert_eq!(v["message"], "no such file");
        assert_eq!(encode(&Outcome::Exited(0), false), None);
        assert_eq!(
            encode(&Outcome::Failed("boom".into()), false),
            Some(b"boom".to_vec())
        );
    }
}
