//! The capacity planners' read API, as typed views: `GET /api/v1/tenants`
//! (sortable, paged, filterable, JSON or CSV), `GET /api/v1/tenants/{tenant}`
//! and `GET /api/v1/targets`. A reader: it joins the store snapshot, the
//! targets' last polls, the detector's judgement and the rate limits, and
//! never talks to PostgreSQL or a socket. The HTTP handlers in
//! [`crate::http`] serialize what it returns.
//!
//! - [`query`]: URL decoding, the list's query string and sort fields;
//! - [`tenants`]: tenant rows, paging, CSV (on top of [`query`], which
//!   knows nothing of rows);
//! - [`detail`]: one tenant in detail;
//! - [`targets`]: the targets view;
//! - [`pgbouncers`]: the PgBouncers' health and pools, and a tenant's pools.

pub mod detail;
pub mod pgbouncers;
pub mod query;
pub mod targets;
pub mod tenants;

pub use detail::{DetailSources, TenantDetail, tenant_detail};
pub use pgbouncers::{PgBouncerView, pgbouncer_views, tenant_pools};
pub use query::{
    BadParameter, ListQuery, MAX_LIMIT, SortField, SortKey, parse_list_query, url_decode_path,
    url_encode,
};
pub use targets::{TargetView, target_views};
pub use tenants::{Page, TenantRow, csv, page, tenant_page, tenant_rows};

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tenant: &str, share: f64, flagged: bool, target: &str) -> TenantRow {
        TenantRow {
            db_time_share: share,
            flags: if flagged {
                vec!["db_time_hog".into()]
            } else {
                vec![]
            },
            targets: vec![target.into()],
            ..TenantRow::probe(tenant)
        }
    }

    #[test]
    fn rows_join_the_store_and_the_targets_in_id_order() {
        use crate::store::{ActivitySnapshot, TargetStatus, TenantActivity, TenantSummary};
        let summary = |tenant: &str, queries: f64| TenantSummary {
            tenant: tenant.into(),
            queries,
            errors: queries / 2.0,
            rows: 0.0,
            db_time_share: 0.5,
        };
        let mut activity = ActivitySnapshot::default();
        for tenant in ["a", "b", "d"] {
            activity.tenants.insert(
                tenant.into(),
                TenantActivity {
                    connections: [("active", 2)].into(),
                    ..TenantActivity::default()
                },
            );
        }
        let target = TargetStatus {
            name: "main".into(),
            activity: Some(std::sync::Arc::new(activity)),
            ..TargetStatus::default()
        };
        let limits = crate::ratelimit::RateLimits::new(
            crate::ratelimit::RatePolicy::default(),
            10,
            std::time::Duration::from_secs(60),
        );
        let rows = tenant_rows(
            &[summary("a", 4.0), summary("c", 2.0)],
            &[target],
            &crate::detect::Judgement::default(),
            &limits,
        );
        let names: Vec<&str> = rows.iter().map(|r| &*r.tenant).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!((rows[0].queries, rows[0].connections), (4.0, 2.0));
        assert_eq!(rows[0].error_ratio, 0.5);
        assert_eq!(rows[0].targets, ["main"]);
        assert_eq!((rows[1].queries, rows[1].connections), (0.0, 2.0));
        assert_eq!((rows[2].queries, rows[2].connections), (2.0, 0.0));
        assert!(rows[2].targets.is_empty());
        assert!(rows.iter().all(|r| r.effective_qps > 0.0));
    }

    #[test]
    fn paging_is_stable_and_complete_with_ties() {
        let rows: Vec<TenantRow> = (0..57)
            .map(|i| {
                row(
                    &format!("t{i:02}"),
                    (i % 5) as f64 / 10.0,
                    i % 7 == 0,
                    if i % 2 == 0 { "a" } else { "b" },
                )
            })
            .collect();
        let mut q =
            parse_list_query(Some("sort=db_time_share&order=desc&limit=10"), false).unwrap();
        let mut seen = Vec::new();
        loop {
            let p = page(&rows, &q);
            assert_eq!(p.total, 57);
            seen.extend(
                p.tenants
                    .iter()
                    .map(|r| (r.db_time_share, r.tenant.clone())),
            );
            match p.next_cursor {
                Some(cursor) => {
                    q.cursor = parse_list_query(Some(&format!("cursor={cursor}")), false)
                        .unwrap()
                        .cursor
                }
                None => break,
            }
        }
        assert_eq!(seen.len(), 57);
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        assert_eq!(seen, sorted);
    }

    proptest::proptest! {
        /// Paging through any rows (ties, filters, either order, any page
        /// size) gives each selected row once, in the order a full sort
        /// gives: the page's heap keeps what a sort would.
        #[test]
        fn pages_follow_a_full_sort(
            rows in proptest::collection::vec((0u8..40, 0u8..4, proptest::bool::ANY), 0..120),
            limit in 1usize..20,
            descending in proptest::bool::ANY,
            by_tenant in proptest::bool::ANY,
            flagged in proptest::option::of(proptest::bool::ANY),
        ) {
            let mut seen_ids = std::collections::HashSet::new();
            let rows: Vec<TenantRow> = rows
                .iter()
                .filter(|(id, _, _)| seen_ids.insert(*id))
                .map(|(id, share, flag)| row(&format!("t{id}"), f64::from(*share) / 4.0, *flag, "a"))
                .collect();
            let mut text = format!(
                "sort={}&order={}&limit={limit}",
                if by_tenant { "tenant" } else { "db_time_share" },
                if descending { "desc" } else { "asc" },
            );
            if let Some(f) = flagged {
                text.push_str(&format!("&flagged={f}"));
            }
            let mut q = parse_list_query(Some(&text), false).unwrap();
            let mut paged = Vec::new();
            loop {
                let p = page(&rows, &q);
                proptest::prop_assert!(p.tenants.len() <= limit);
                paged.extend(p.tenants.iter().map(|r| r.tenant.clone()));
                match p.next_cursor {
                    Some(cursor) => {
                        q.cursor = parse_list_query(Some(&format!("cursor={cursor}")), false)
                            .unwrap()
                            .cursor;
                    }
                    None => break,
                }
            }
            let mut expected: Vec<&TenantRow> = rows
                .iter()
                .filter(|r| flagged.is_none_or(|f| f != r.flags.is_empty()))
                .collect();
            expected.sort_by(|a, b| {
                let by_value = if by_tenant {
                    std::cmp::Ordering::Equal
                } else {
                    a.db_time_share.total_cmp(&b.db_time_share)
                };
                let by_value = if descending { by_value.reverse() } else { by_value };
                by_value.then_with(|| a.tenant.cmp(&b.tenant))
            });
            let expected: Vec<_> = expected.iter().map(|r| r.tenant.clone()).collect();
            proptest::prop_assert_eq!(paged, expected);
        }
    }

    #[test]
    fn a_page_has_its_rows_quotas_whatever_it_is_sorted_by() {
        let summaries: Vec<crate::store::TenantSummary> = (0..30)
            .map(|i| crate::store::TenantSummary {
                tenant: format!("t{i:02}").into(),
                queries: f64::from(i),
                errors: 0.0,
                rows: 0.0,
                db_time_share: 0.0,
            })
            .collect();
        let mut policy = crate::ratelimit::RatePolicy::default();
        policy.tenants.insert(
            "t03".into(),
            crate::ratelimit::TenantOverride {
                qps: Some(1.0),
                ..Default::default()
            },
        );
        let limits =
            crate::ratelimit::RateLimits::new(policy, 10, std::time::Duration::from_secs(60));
        let judgement = crate::detect::Judgement::default();
        for (query, first) in [
            ("sort=queries&order=asc&limit=5", "t00"),
            ("sort=effective_qps&order=asc&limit=5", "t03"),
        ] {
            let q = parse_list_query(Some(query), false).unwrap();
            let p = tenant_page(summaries.clone(), &[], &judgement, &limits, &q);
            assert_eq!(&*p.tenants[0].tenant, first, "{query}");
            for r in &p.tenants {
                assert_eq!(
                    r.effective_qps,
                    limits.effective(&r.tenant).1.qps,
                    "{query}: {}",
                    r.tenant
                );
                assert!(r.effective_qps > 0.0);
            }
        }
    }

    #[test]
    fn filters_and_bad_parameters() {
        let rows: Vec<TenantRow> = (0..20)
            .map(|i| row(&format!("t{i}"), 0.0, i < 3, if i < 5 { "a" } else { "b" }))
            .collect();
        let q = parse_list_query(Some("flagged=true&target=a"), false).unwrap();
        assert_eq!(page(&rows, &q).total, 3);
        let q = parse_list_query(Some("target=b&sort=tenant"), false).unwrap();
        let p = page(&rows, &q);
        assert_eq!(p.total, 15);
        assert_eq!(&*p.tenants[0].tenant, "t10");
        assert_eq!(
            parse_list_query(Some("sort=db_time"), false).unwrap().sort,
            SortKey::Field(SortField::DbTimeShare)
        );
        for (query, name) in [
            ("sort=size", "sort"),
            ("order=up", "order"),
            ("limit=0", "limit"),
            ("limit=5000", "limit"),
            ("cursor=x", "cursor"),
            ("flagged=yes", "flagged"),
            ("format=xml", "format"),
            ("colour=red", "colour"),
        ] {
            assert_eq!(
                parse_list_query(Some(query), false).unwrap_err().name,
                name,
                "{query}"
            );
        }
    }

    #[test]
    fn csv_has_a_header_and_a_line_per_row() {
        let rows = [row("t1", 0.5, true, "a"), row("t2", 0.25, false, "b")];
        let text = csv(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("tenant,queries,errors"));
        assert!(lines[1].starts_with("t1,0,0,0,0,0.5,"));
        assert!(lines[1].ends_with(",a,db_time_hog"));
    }

    #[test]
    fn csv_quotes_per_rfc_4180_and_neutralises_formulas() {
        let mut evil = row("=HYPERLINK(\"x\")", 0.0, false, "a,b");
        evil.flags = vec!["@SUM(1)".into()];
        let text = csv(&[evil, row("-1", 0.0, false, "c\"d")]);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert!(
            lines[1].starts_with("\"'=HYPERLINK(\"\"x\"\")\","),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with(",\"a,b\",\"'@SUM(1)\""), "{}", lines[1]);
        assert!(lines[2].starts_with("\"'-1\","), "{}", lines[2]);
        assert!(lines[2].contains(",\"c\"\"d\","), "{}", lines[2]);
    }

    /// The `target` a list query asks for, decoded.
    fn target(query: &str) -> String {
        parse_list_query(Some(&format!("target={query}")), false)
            .unwrap()
            .target
            .unwrap()
    }

    #[test]
    fn url_decoding() {
        assert_eq!(target("a%7Cb+c"), "a|b c");
        assert_eq!(target("%zz%"), "%zz%");
        // A sign is no hex digit; an old decoder read `%+f` as 0x0f.
        assert_eq!(target("%+f%-1"), "% f%-1");
        assert_eq!(url_decode_path("%+f"), "%+f");
        assert_eq!(target("a%7"), "a%7");
        assert_eq!(target("%FF"), "\u{fffd}");
        // In a path, `+` is a plus.
        assert_eq!(url_decode_path("team+a%2Fb"), "team+a/b");
    }

    #[test]
    fn url_encoding_round_trips_a_cursor() {
        let cursor = "0.25|team a/b+c&d=é~_.-";
        assert_eq!(
            url_encode(cursor),
            "0.25%7Cteam%20a%2Fb%2Bc%26d%3D%C3%A9~_.-"
        );
        let q = parse_list_query(Some(&format!("cursor={}", url_encode(cursor))), false).unwrap();
        assert_eq!(q.cursor, Some((0.25, "team a/b+c&d=é~_.-".to_owned())));
    }
}
