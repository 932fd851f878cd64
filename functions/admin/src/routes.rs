//! Every route of the admin API with the access it needs. `openapi.yaml` must list exactly
//! these (method, path, `x-required-role`); a test holds the two together.

use shared::db::apikeys::Role;

use crate::ApiError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key (the OpenAPI document).
    Public,
    /// Any valid key.
    AnyKey,
    /// Only the platform (operator) key.
    Platform,
    /// A key of the tenant with at least this role; the data is that tenant's.
    Tenant(Role),
}

impl Access {
    /// As written in `x-required-role`.
    pub fn name(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::AnyKey => "any",
            Access::Platform => "platform",
            Access::Tenant(r) => r.as_str(),
        }
    }
}

/// What a route does (dispatched in `api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    OpenApi,
    Me,
    ListTenants,
    CreateTenant,
    GetTenant,
    DeactivateTenant,
    TopUp,
    IssueTenantKey,
    CreateTenantChannel,
    ListKeys,
    CreateKey,
    RevokeKey,
    ListChannels,
    CreateChannel,
    GetChannel,
    UpdateChannel,
    DeactivateChannel,
    ListAgents,
    CreateAgent,
    GetAgent,
    UpdateAgent,
    DeactivateAgent,
    Credits,
    Ledger,
    ListConversations,
    GetConversation,
    ListMessages,
    SetMode,
    SendMessage,
    ListLeads,
    ExportLeads,
    GetLead,
    GetWebhook,
    SetWebhook,
    DeleteWebhook,
}

#[derive(Debug)]
pub struct RouteSpec {
    pub method: &'static str,
    /// Template; `{name}` is one path segment.
    pub path: &'static str,
    pub access: Access,
    pub op: Op,
}

const fn r(method: &'static str, path: &'static str, access: Access, op: Op) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        op,
    }
}

use Access::{AnyKey, Platform, Public, Tenant};
use Role::{Agent, Owner, Viewer};

pub const ROUTES: &[RouteSpec] = &[
    r("GET", "/v1/openapi.yaml", Public, Op::OpenApi),
    r("GET", "/v1/me", AnyKey, Op::Me),
    r("GET", "/v1/tenants", Platform, Op::ListTenants),
    r("POST", "/v1/tenants", Platform, Op::CreateTenant),
    r("GET", "/v1/tenants/{tenant_id}", Platform, Op::GetTenant),
    r(
        "DELETE",
        "/v1/tenants/{tenant_id}",
        Platform,
        Op::DeactivateTenant,
    ),
    r(
        "POST",
        "/v1/tenants/{tenant_id}/credits",
        Platform,
        Op::TopUp,
    ),
    r(
        "POST",
        "/v1/tenants/{tenant_id}/keys",
        Platform,
        Op::IssueTenantKey,
    ),
    r(
        "POST",
        "/v1/tenants/{tenant_id}/channels",
        Platform,
        Op::CreateTenantChannel,
    ),
    r("GET", "/v1/keys", Tenant(Owner), Op::ListKeys),
    r("POST", "/v1/keys", Tenant(Owner), Op::CreateKey),
    r("DELETE", "/v1/keys/{key_id}", Tenant(Owner), Op::RevokeKey),
    r("GET", "/v1/channels", Tenant(Viewer), Op::ListChannels),
    r("POST", "/v1/channels", Tenant(Owner), Op::CreateChannel),
    r(
        "GET",
        "/v1/channels/{channel_id}",
        Tenant(Viewer),
        Op::GetChannel,
    ),
    r(
        "PATCH",
        "/v1/channels/{channel_id}",
        Tenant(Owner),
        Op::UpdateChannel,
    ),
    r(
        "DELETE",
        "/v1/channels/{channel_id}",
        Tenant(Owner),
        Op::DeactivateChannel,
    ),
    r("GET", "/v1/agents", Tenant(Viewer), Op::ListAgents),
    r("POST", "/v1/agents", Tenant(Owner), Op::CreateAgent),
    r("GET", "/v1/agents/{agent_id}", Tenant(Viewer), Op::GetAgent),
    r(
        "PATCH",
        "/v1/agents/{agent_id}",
        Tenant(Owner),
        Op::UpdateAgent,
    ),
    r(
        "DELETE",
        "/v1/agents/{agent_id}",
        Tenant(Owner),
        Op::DeactivateAgent,
    ),
    r("GET", "/v1/credits", Tenant(Viewer), Op::Credits),
    r("GET", "/v1/credits/ledger", Tenant(Viewer), Op::Ledger),
    r(
        "GET",
        "/v1/conversations",
        Tenant(Viewer),
        Op::ListConversations,
    ),
    r(
        "GET",
        "/v1/conversations/{conversation_id}",
        Tenant(Viewer),
        Op::GetConversation,
    ),
    r(
        "GET",
        "/v1/conversations/{conversation_id}/messages",
        Tenant(Viewer),
        Op::ListMessages,
    ),
    r(
        "PUT",
        "/v1/conversations/{conversation_id}/mode",
        Tenant(Agent),
        Op::SetMode,
    ),
    r(
        "POST",
        "/v1/conversations/{conversation_id}/messages",
        Tenant(Agent),
        Op::SendMessage,
    ),
    r("GET", "/v1/leads", Tenant(Viewer), Op::ListLeads),
    r("GET", "/v1/leads.csv", Tenant(Viewer), Op::ExportLeads),
    r("GET", "/v1/leads/{lead_id}", Tenant(Viewer), Op::GetLead),
    r("GET", "/v1/webhook", Tenant(Owner), Op::GetWebhook),
    r("PUT", "/v1/webhook", Tenant(Owner), Op::SetWebhook),
    r("DELETE", "/v1/webhook", Tenant(Owner), Op::DeleteWebhook),
];

/// The route for `method` and `path` and its path parameters. Anything before `/v1` is a
/// prefix (cargo lambda watch serves under `/lambda-url/<fn>/`). Unknown path → 404; known
/// path, other method → 405.
pub fn find(method: &str, path: &str) -> Result<(&'static RouteSpec, Vec<String>), ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(at) = segs.iter().position(|s| *s == "v1") else {
        return Err(ApiError::NotFound);
    };
    let segs = &segs[at..];
    let mut path_known = false;
    for spec in ROUTES {
        let tpl: Vec<&str> = spec.path.split('/').filter(|s| !s.is_empty()).collect();
        if tpl.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        let matched = tpl.iter().zip(segs).all(|(t, s)| {
            if t.starts_with('{') {
                params.push((*s).to_owned());
                true
            } else {
                t == s
            }
        });
        if matched {
            path_known = true;
            if spec.method == method {
                return Ok((spec, params));
            }
        }
    }
    Err(if path_known {
        ApiError::MethodNotAllowed
    } else {
        ApiError::NotFound
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_routes_with_params_behind_any_prefix() {
        let (spec, params) = find("GET", "/lambda-url/admin/v1/agents/abc").unwrap();
        assert_eq!((spec.op, params), (Op::GetAgent, vec!["abc".to_owned()]));
        assert_eq!(find("GET", "/v1/leads.csv").unwrap().0.op, Op::ExportLeads);
        assert!(matches!(
            find("POST", "/v1/credits"),
            Err(ApiError::MethodNotAllowed)
        ));
        assert!(matches!(find("GET", "/v1/nope"), Err(ApiError::NotFound)));
        assert!(matches!(find("GET", "/agents"), Err(ApiError::NotFound)));
    }

    #[test]
    fn every_route_is_unique() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    (a.method, a.path) != (b.method, b.path),
                    "{} {}",
                    a.method,
                    a.path
                );
            }
        }
    }
}
