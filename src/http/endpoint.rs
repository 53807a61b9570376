//! The endpoints, as a closed set: the path each answers at, the methods it
//! allows, and its `endpoint` label. Routing matches this enum exhaustively,
//! so a new endpoint cannot fall into another's handler.

use hyper::Method;

/// Every endpoint of the one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/`: a landing page with the version and a link to every endpoint.
    Index,
    Metrics,
    Healthz,
    Readyz,
    Events,
    RatelimitCheck,
    Flags,
    Advice,
    /// `GET /api/v1/guard`: the last guard actions.
    Guard,
    Tenants,
    Tenant,
    Targets,
    Capacity,
    OpenApi,
}

/// Prefix of `GET /api/v1/tenants/{tenant}`.
pub const TENANT_PATH_PREFIX: &str = "/api/v1/tenants/";

impl Endpoint {
    pub const ALL: [Endpoint; 14] = [
        Endpoint::Index,
        Endpoint::Metrics,
        Endpoint::Healthz,
        Endpoint::Readyz,
        Endpoint::Events,
        Endpoint::RatelimitCheck,
        Endpoint::Flags,
        Endpoint::Advice,
        Endpoint::Guard,
        Endpoint::Tenants,
        Endpoint::Tenant,
        Endpoint::Targets,
        Endpoint::Capacity,
        Endpoint::OpenApi,
    ];

    /// The endpoint serving `path`, if any.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/" => Endpoint::Index,
            "/metrics" => Endpoint::Metrics,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/v1/events" => Endpoint::Events,
            "/v1/ratelimit/check" => Endpoint::RatelimitCheck,
            "/api/v1/flags" => Endpoint::Flags,
            "/api/v1/advice" => Endpoint::Advice,
            "/api/v1/guard" => Endpoint::Guard,
            "/api/v1/tenants" => Endpoint::Tenants,
            "/api/v1/targets" => Endpoint::Targets,
            "/api/v1/capacity" => Endpoint::Capacity,
            "/api/v1/openapi.json" => Endpoint::OpenApi,
            p if p.starts_with(TENANT_PATH_PREFIX) => Endpoint::Tenant,
            _ => return None,
        })
    }

    /// The `endpoint` label of `tenantwatch_http_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Index => "index",
            Endpoint::Metrics => "metrics",
            Endpoint::Healthz => "healthz",
            Endpoint::Readyz => "readyz",
            Endpoint::Events => "events",
            Endpoint::RatelimitCheck => "ratelimit_check",
            Endpoint::Flags => "flags",
            Endpoint::Advice => "advice",
            Endpoint::Guard => "guard",
            Endpoint::Tenants => "tenants",
            Endpoint::Tenant => "tenant",
            Endpoint::Targets => "targets",
            Endpoint::Capacity => "capacity",
            Endpoint::OpenApi => "openapi",
        }
    }

    /// Whether the endpoint takes a body (POST) or is read (GET, HEAD).
    pub fn is_post(self) -> bool {
        matches!(self, Endpoint::Events | Endpoint::RatelimitCheck)
    }

    /// Whether a configured read token is required: the exposition and the
    /// planners' API say what tenants exist and how big they are; the
    /// probes stay open for the kubelet.
    pub fn needs_read_token(self) -> bool {
        match self {
            Endpoint::Index | Endpoint::Healthz | Endpoint::Readyz => false,
            // The write endpoints check the write token themselves.
            Endpoint::Events | Endpoint::RatelimitCheck => false,
            Endpoint::Metrics
            | Endpoint::Flags
            | Endpoint::Advice
            | Endpoint::Guard
            | Endpoint::Tenants
            | Endpoint::Tenant
            | Endpoint::Targets
            | Endpoint::Capacity
            | Endpoint::OpenApi => true,
        }
    }

    /// The `Allow` header value.
    pub fn allowed_methods(self) -> &'static str {
        if self.is_post() { "POST" } else { "GET, HEAD" }
    }

    pub fn allows(self, method: &Method) -> bool {
        if self.is_post() {
            method == Method::POST
        } else {
            method == Method::GET || method == Method::HEAD
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_routes_to_itself_and_labels_are_unique() {
        let mut labels = std::collections::HashSet::new();
        for endpoint in Endpoint::ALL {
            assert!(labels.insert(endpoint.as_str()));
        }
        assert_eq!(Endpoint::from_path("/metrics"), Some(Endpoint::Metrics));
        assert_eq!(
            Endpoint::from_path("/api/v1/tenants/clinic1"),
            Some(Endpoint::Tenant)
        );
        assert_eq!(Endpoint::from_path("/v1/event"), None);
        assert!(Endpoint::Events.allows(&Method::POST));
        assert!(!Endpoint::Events.allows(&Method::GET));
        assert!(Endpoint::Tenants.allows(&Method::HEAD));
    }
}
