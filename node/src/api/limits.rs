//! Per-client rate limits (governor): login attempts per username, registrations per client
//! address, and authenticated requests per user. Each refusal is a 429 and changes nothing.

use super::error::ApiError;
use axum::http::HeaderMap;
use chorus_protocol::api::ErrorCode;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// Rate-limit settings (requests per second, burst).
#[derive(Debug, Clone)]
pub struct LimitConfig {
    /// Authenticated requests per user per second (0: unlimited).
    pub user_rps: u32,
    /// Login attempts per username per minute.
    pub logins_per_minute: u32,
    /// Registrations per client address per minute.
    pub registrations_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self { user_rps: 200, logins_per_minute: 10, registrations_per_minute: 30, trusted_proxies: Vec::new() }
    }
}

/// The limiters.
#[derive(Debug)]
pub struct Limits {
    user: Option<DefaultKeyedRateLimiter<String>>,
    login: Option<DefaultKeyedRateLimiter<String>>,
    register: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted_proxies: Vec<IpAddr>,
}

fn keyed<K: std::hash::Hash + Eq + Clone>(per: Duration, n: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let n = NonZeroU32::new(n)?;
    let quota = Quota::with_period(per / n.get())?.allow_burst(n);
    Some(RateLimiter::keyed(quota))
}

fn refused(what: &str) -> ApiError {
    ApiError::new(ErrorCode::RateLimited, format!("too many {what}; slow down and retry shortly"))
}

impl Limits {
    /// Limiters for `cfg`.
    pub fn new(cfg: LimitConfig) -> Self {
        Self {
            user: keyed(Duration::from_secs(1), cfg.user_rps),
            login: keyed(Duration::from_secs(60), cfg.logins_per_minute),
            register: keyed(Duration::from_secs(60), cfg.registrations_per_minute),
            trusted_proxies: cfg.trusted_proxies,
        }
    }

    /// The client behind a connection from `peer`: past trusted proxies, the address the
    /// nearest of them put last in `X-Forwarded-For` (a client can prepend entries of its
    /// own, never append one after the proxy's).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in forwarded.iter().rev() {
            if !self.trusted_proxies.contains(&client) {
                break;
            }
            match hop.parse() {
                Ok(ip) => client = ip,
                Err(_) => break,
            }
        }
        client
    }

    /// One authenticated request by `user`.
    pub fn check_user(&self, user: &str) -> Result<(), ApiError> {
        match &self.user {
            Some(l) if l.check_key(&user.to_owned()).is_err() => Err(refused("requests")),
            _ => Ok(()),
        }
    }

    /// One login attempt for `username`.
    pub fn check_login(&self, username: &str) -> Result<(), ApiError> {
        match &self.login {
            Some(l) if l.check_key(&username.to_owned()).is_err() => Err(refused("login attempts")),
            _ => Ok(()),
        }
    }

    /// One registration from `ip`.
    pub fn check_register(&self, ip: IpAddr) -> Result<(), ApiError> {
        match &self.register {
            Some(l) if l.check_key(&ip).is_err() => Err(refused("registrations")),
            _ => Ok(()),
        }
    }

    /// Forgets keys whose buckets are full again (bounded memory).
    pub fn prune(&self) {
        if let Some(l) = &self.user {
            l.retain_recent();
        }
        if let Some(l) = &self.login {
            l.retain_recent();
        }
        if let Some(l) = &self.register {
            l.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_counts_only_behind_trusted_proxies() {
        let gateway: IpAddr = "10.0.0.1".parse().unwrap();
        let limits = Limits::new(LimitConfig { trusted_proxies: vec![gateway], ..Default::default() });
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 192.0.2.7".parse().unwrap());
        assert_eq!(limits.client_ip(gateway, &h), "192.0.2.7".parse::<IpAddr>().unwrap(), "the gateway's entry");
        let stranger: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(limits.client_ip(stranger, &h), stranger, "a client's own header is ignored");
        assert_eq!(limits.client_ip(gateway, &HeaderMap::new()), gateway);
    }
}
