//! Who a login and its session belong to. Admission turns a presented key into a principal;
//! sessions, commands and audit lines name it.
//! Validators log in through a grant. Renters have a server, keys and sessions of their own
//! ([`crate::tenant`]): nothing of theirs passes through the validators' grants or grammar.

use serde_json::{Value, json};

use crate::grants::GrantRecord;

/// The principal of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A validator, through one of its live grants.
    Validator(GrantRecord),
}

impl Principal {
    /// The validator hotkey behind this principal.
    pub fn hotkey(&self) -> &str {
        match self {
            Principal::Validator(g) => &g.hotkey,
        }
    }
}

/// The audit line `fields` (an object) with the fields naming `principal` added: `grant_id`
/// and `hotkey`, `null` for a connection that has not authenticated.
pub fn with_principal(principal: Option<&Principal>, fields: Value) -> Value {
    let Value::Object(mut fields) = fields else { return fields };
    let (grant_id, hotkey) = match principal {
        Some(Principal::Validator(g)) => (json!(g.id), json!(g.hotkey)),
        None => (Value::Null, Value::Null),
    };
    fields.extend([("grant_id".to_owned(), grant_id), ("hotkey".to_owned(), hotkey)]);
    Value::Object(fields)
}
