//! Every route of the admin API with the access it needs. `openapi.yaml` must list exactly
//! these (method, path, `x-required-role`); a test holds the two together.

use shared::db::apikeys::Role;

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

/// The route of `template` (a path of [`ROUTES`], as the router matched it) for `method`, and
/// its path parameters: the raw segments of `path` where the template has `{name}` (not
/// percent-decoded: an id is what the client wrote). `None`: the path takes no such method.
pub fn find_method(
    template: &str,
    method: &str,
    path: &str,
) -> Option<(&'static RouteSpec, Vec<String>)> {
    let spec = ROUTES
        .iter()
        .find(|r| r.path == template && r.method == method)?;
    let segs = path.split('/').filter(|s| !s.is_empty());
    let params = template
        .split('/')
        .filter(|s| !s.is_empty())
        .zip(segs)
        .filter(|(t, _)| t.starts_with('{'))
        .map(|(_, s)| s.to_owned())
        .collect();
    Some((spec, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_either_public_or_keyed_for_every_method() {
        // The router serves a path with one handler: the public one reads no key.
        for spec in ROUTES {
            let public = |r: &RouteSpec| r.access == Access::Public;
            assert!(
                ROUTES
                    .iter()
                    .filter(|r| r.path == spec.path)
                    .all(|r| public(r) == public(spec)),
                "{}",
                spec.path
            );
        }
    }

    #[test]
    fn finds_a_paths_method_and_its_raw_parameters() {
        let (spec, params) =
            find_method("/v1/agents/{agent_id}", "GET", "/v1/agents/a%62c").unwrap();
        assert_eq!((spec.op, params), (Op::GetAgent, vec!["a%62c".to_owned()]));
        let (spec, params) = find_method(
            "/v1/conversations/{conversation_id}/messages",
            "POST",
            "/v1/conversations/c1/messages",
        )
        .unwrap();
        assert_eq!((spec.op, params), (Op::SendMessage, vec!["c1".to_owned()]));
        assert_eq!(
            find_method("/v1/leads.csv", "GET", "/v1/leads.csv")
                .unwrap()
                .0
                .op,
            Op::ExportLeads
        );
        assert!(find_method("/v1/credits", "POST", "/v1/credits").is_none());
        assert!(find_method("/v1/me", "HEAD", "/v1/me").is_none());
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
