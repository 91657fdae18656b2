//! Who a login and its session belong to. Admission turns a presented key into a principal;
//! sessions, commands and audit lines name it.
//! Today only validators log in, through a grant; renters (their own keys, their own
//! container) become a second variant with their own rules beside the validator ones.

use serde_json::{Map, Value, json};

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

    /// The fields naming this principal in audit lines (`grant_id`, `hotkey`); `null` for a
    /// connection that has not authenticated.
    pub fn audit_fields(principal: Option<&Principal>) -> Map<String, Value> {
        let (grant_id, hotkey) = match principal {
            Some(Principal::Validator(g)) => (json!(g.id), json!(g.hotkey)),
            None => (Value::Null, Value::Null),
        };
        Map::from_iter([("grant_id".to_owned(), grant_id), ("hotkey".to_owned(), hotkey)])
    }
}

/// `fields` with the principal's audit fields added.
pub fn with_principal(principal: Option<&Principal>, fields: Value) -> Value {
    let mut fields = match fields {
        Value::Object(map) => map,
        other => return other,
    };
    fields.extend(Principal::audit_fields(principal));
    Value::Object(fields)
}
