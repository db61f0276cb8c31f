//! The canary decision: does the new version of a service fail real requests more than the old
//! one did over the same window? A pure function of request counts (by route and status, per
//! version) and the service's thresholds, plus [`parse_access`], which reads those counts from
//! nginx-proxy's access log: every environment has one (dev and review stacks have no
//! Prometheus), and it records what clients got, including the 502/504 nginx answers when a
//! task does not.

use std::collections::BTreeMap;
use std::fmt;

/// Requests answered over a window, by route (`GET /api/logs`) and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<(String, u16), u64>);

impl Counts {
    /// Adds `n` answers of `status` on `route`.
    pub fn add(&mut self, route: &str, status: u16, n: u64) {
        *self.0.entry((route.to_owned(), status)).or_default() += n;
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Answers with a 5xx status: the server's failures (a 4xx is the client's).
    pub fn failed(&self) -> u64 {
        self.0
            .iter()
            .filter(|((_, status), _)| *status >= 500)
            .map(|(_, n)| n)
            .sum()
    }

    /// The share of failed answers (0 with none at all).
    pub fn failed_ratio(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            total => self.failed() as f64 / total as f64,
        }
    }

    /// What was counted after `earlier` (counters only grow; one that went down was reset,
    /// by a task restart, and counts from zero).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts(
            self.0
                .iter()
                .map(|(key, &now)| {
                    let before = earlier.0.get(key).copied().unwrap_or(0);
                    let n = if now >= before { now - before } else { now };
                    (key.clone(), n)
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        )
    }

    /// The route and status that failed most often, and how often.
    pub fn worst(&self) -> Option<(&str, u16, u64)> {
        self.0
            .iter()
            .filter(|((_, status), n)| *status >= 500 && **n > 0)
            .max_by_key(|((route, status), n)| (**n, std::cmp::Reverse((route.clone(), *status))))
            .map(|((route, status), n)| (route.as_str(), *status, *n))
    }
}

/// One answer an upstream gave, as nginx-proxy's access log (its `proxy` format) records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    /// The task's address and port, `10.0.1.5:8080`.
    pub upstream: String,
    /// The method and path without its query, `GET /api/logs`.
    pub route: String,
    pub status: u16,
}

/// The upstream answers of one access log line (`docker service logs` prefixes allowed): one
/// per attempt when nginx tried more than one task (`upstream=a:8080, b:8080
/// upstream_status=502, 200`). None for a line of another kind, an answer nginx gave itself
/// (`upstream=-`), or an attempt with no status (`-`).
pub fn parse_access(line: &str) -> Vec<Answered> {
    // `... upstream=<addr>[, <addr>...] upstream_status=<status>[, <status>...] rt=...`
    let between = |from: &str, to: &str| -> Option<&str> {
        let start = line.find(from)? + from.len();
        let end = line[start..].find(to).map_or(line.len(), |i| start + i);
        Some(line[start..end].trim())
    };
    let route = line.split_once(" \"").and_then(|(_, rest)| {
        let request = rest.split('"').next()?;
        let mut words = request.split(' ');
        let (method, target) = (words.next()?, words.next()?);
        let path = target.split('?').next()?;
        (!method.is_empty() && path.starts_with('/')).then(|| format!("{method} {path}"))
    });
    let (Some(route), Some(upstreams), Some(statuses)) = (
        route,
        between(" upstream=", " upstream_status="),
        between(" upstream_status=", " rt="),
    ) else {
        return Vec::new();
    };
    // nginx separates the tasks it tried with ", " (an internal redirect adds " : ").
    let list = |v: &str| -> Vec<String> {
        v.split([',', ' '])
            .filter(|w| !w.is_empty() && *w != ":")
            .map(str::to_owned)
            .collect()
    };
    list(upstreams)
        .into_iter()
        .zip(list(statuses))
        .filter_map(|(upstream, status)| {
            let status: u16 = status.parse().ok()?;
            upstream.contains(':').then(|| Answered {
                upstream,
                route: route.clone(),
                status,
            })
        })
        .collect()
}

/// The answers of `lines` (access log lines) by version: `versions` maps a task's address
/// (without port) to the version it runs; answers of other addresses (another service's
/// tasks, a task already gone) are not counted.
pub fn counts_by_version<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    versions: &BTreeMap<String, String>,
) -> BTreeMap<String, Counts> {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    for answered in lines.into_iter().flat_map(parse_access) {
        let address = answered
            .upstream
            .rsplit_once(':')
            .map_or(answered.upstream.as_str(), |(a, _)| a);
        if let Some(version) = versions.get(address) {
            out.entry(version.clone())
                .or_default()
                .add(&answered.route, answered.status, 1);
        }
    }
    out
}

/// When too little traffic reached the new version to judge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TooLittle {
    /// Let the rollout go on (said as such, never as a pass).
    Proceed,
    /// Roll back, as for a breach.
    RollBack,
}

/// A service's thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// Requests the new version must have answered before it is judged.
    pub min_requests: u64,
    /// The new version's failed share above which it may be a breach (0.05 = 5 %).
    pub max_failed_ratio: f64,
    /// ... and only when it is also this many times the old version's (a database outage fails
    /// both alike: not the release's fault).
    pub max_times_old: f64,
    pub too_little: TooLittle,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_requests: 50,
            max_failed_ratio: 0.05,
            max_times_old: 2.0,
            too_little: TooLittle::Proceed,
        }
    }
}

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The new version fails no more than allowed.
    Healthy { new: Counts, old: Counts },
    /// The new version fails real requests: roll back.
    Breach { new: Counts, old: Counts },
    /// Too few requests reached the new version to say.
    TooLittleTraffic {
        new: Counts,
        old: Counts,
        then: TooLittle,
    },
}

impl Verdict {
    /// Whether the rollout must be rolled back.
    pub fn rolls_back(&self) -> bool {
        match self {
            Verdict::Breach { .. } => true,
            Verdict::TooLittleTraffic { then, .. } => *then == TooLittle::RollBack,
            Verdict::Healthy { .. } => false,
        }
    }
}

/// Judges the new version on what it answered over the window (`new`) against what the old
/// one answered over the same window (`old`).
pub fn judge(new: &Counts, old: &Counts, t: &Thresholds) -> Verdict {
    let (new, old) = (new.clone(), old.clone());
    if new.total() < t.min_requests {
        return Verdict::TooLittleTraffic {
            new,
            old,
            then: t.too_little,
        };
    }
    let ratio = new.failed_ratio();
    // The old version is a reference only when it answered enough itself.
    let old_ratio = (old.total() >= t.min_requests).then(|| old.failed_ratio());
    let worse_than_old = old_ratio.is_none_or(|o| ratio > o * t.max_times_old);
    if ratio > t.max_failed_ratio && worse_than_old {
        Verdict::Breach { new, old }
    } else {
        Verdict::Healthy { new, old }
    }
}

fn share(c: &Counts) -> String {
    format!(
        "{} of {} failed ({:.1} %)",
        c.failed(),
        c.total(),
        c.failed_ratio() * 100.0
    )
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Healthy { new, old } => write!(
                f,
                "canary healthy: new version {}, old version {}",
                share(new),
                share(old)
            ),
            Verdict::Breach { new, old } => {
                write!(
                    f,
                    "canary failed real requests: new version {}, old version {}",
                    share(new),
                    share(old)
                )?;
                if let Some((route, status, n)) = new.worst() {
                    write!(f, "; most failed: {route} answered {status} {n} times")?;
                }
                Ok(())
            }
            Verdict::TooLittleTraffic { new, old, then } => write!(
                f,
                "too little traffic to judge the canary: the new version answered {} requests, the old {}; {}",
                new.total(),
                old.total(),
                match then {
                    TooLittle::Proceed => "the rollout goes on unjudged",
                    TooLittle::RollBack => "rolling back, as set",
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rows: &[(&str, u16, u64)]) -> Counts {
        let mut c = Counts::default();
        for (route, status, n) in rows {
            c.add(route, *status, *n);
        }
        c
    }

    const LOGGED: &str = "2026-12-06T19:40:46.123456789Z stackship-prod_nginx-proxy.1.k3x9@vm    | 172.18.0.1 [2026-12-06T19:40:46+00:00] \"GET /api/logs?before=5&limit=20 HTTP/1.1\" 200 512 rid=4f2a upstream=10.0.1.5:8080 upstream_status=200 rt=0.003 urt=0.003 \"curl/7.88.1\"";

    #[test]
    fn an_access_line_gives_each_upstream_answer() {
        assert_eq!(
            parse_access(LOGGED),
            vec![Answered {
                upstream: "10.0.1.5:8080".into(),
                route: "GET /api/logs".into(),
                status: 200
            }]
        );
        // nginx tried two tasks: the first refused (502), the second answered.
        let retried = "172.18.0.1 [t] \"POST /api/log HTTP/1.1\" 201 40 rid=1 upstream=10.0.1.5:8080, 10.0.1.6:8080 upstream_status=502, 201 rt=0.010 urt=0.001, 0.009 \"ua\"";
        assert_eq!(
            parse_access(retried)
                .iter()
                .map(|a| format!("{} {} {}", a.upstream, a.route, a.status))
                .collect::<Vec<_>>(),
            [
                "10.0.1.5:8080 POST /api/log 502",
                "10.0.1.6:8080 POST /api/log 201"
            ]
        );
        // An internal redirect's second group.
        let redirected = "x [t] \"GET /a HTTP/1.1\" 500 1 rid=1 upstream=10.0.1.5:8080 : 10.0.1.7:8080 upstream_status=404 : 500 rt=0.1 urt=0.1 \"ua\"";
        assert_eq!(parse_access(redirected).len(), 2);
        assert_eq!(parse_access(redirected)[1].status, 500);
    }

    #[test]
    fn lines_without_an_upstream_answer_give_none() {
        for line in [
            // nginx answered itself (a redirect, a static 404).
            "x [t] \"GET /old HTTP/1.1\" 301 0 rid=1 upstream=- upstream_status=- rt=0.000 urt=- \"ua\"",
            // A bad request line.
            "x [t] \"\\x16\\x03\" 400 0 rid=1 upstream=- upstream_status=- rt=0.000 urt=- \"-\"",
            // Not an access line at all.
            "2026/12/06 19:40:46 [notice] 1#1: signal process started",
            "",
        ] {
            assert_eq!(parse_access(line), vec![], "{line}");
        }
        // A path that is not a path, or no status for the attempt: skipped.
        assert!(parse_access("x [t] \"GET * HTTP/1.1\" 200 0 rid=1 upstream=10.0.1.5:8080 upstream_status=200 rt=0 urt=0 \"ua\"").is_empty());
        assert!(parse_access("x [t] \"GET / HTTP/1.1\" 504 0 rid=1 upstream=10.0.1.5:8080 upstream_status=- rt=0 urt=0 \"ua\"").is_empty());
    }

    #[test]
    fn answers_are_counted_per_version_of_the_task_that_gave_them() {
        let line = |upstream: &str, status: &str, path: &str| {
            format!(
                "x [t] \"GET {path} HTTP/1.1\" 200 1 rid=1 upstream={upstream} upstream_status={status} rt=0 urt=0 \"ua\""
            )
        };
        let lines = [
            line("10.0.1.5:8080", "200", "/api/logs"),
            line("10.0.1.5:8080", "500", "/api/logs"),
            line("10.0.1.6:8080", "200", "/api/logs?x=1"),
            line("10.0.1.5:8080, 10.0.1.6:8080", "502, 200", "/api/logs"),
            // The frontend's task, and nginx's own answer: not counted.
            line("10.0.1.9:8080", "200", "/"),
            line("-", "-", "/"),
        ];
        let versions: BTreeMap<String, String> = [
            ("10.0.1.5".to_owned(), "new".to_owned()),
            ("10.0.1.6".to_owned(), "old".to_owned()),
        ]
        .into();
        let by = counts_by_version(lines.iter().map(String::as_str), &versions);
        assert_eq!(
            by,
            [
                (
                    "new".to_owned(),
                    counts(&[
                        ("GET /api/logs", 200, 1),
                        ("GET /api/logs", 500, 1),
                        ("GET /api/logs", 502, 1)
                    ])
                ),
                ("old".to_owned(), counts(&[("GET /api/logs", 200, 2)])),
            ]
            .into()
        );
    }

    #[test]
    fn counts_add_up_and_only_5xx_fail() {
        let c = counts(&[
            ("GET /api/logs", 200, 90),
            ("GET /api/logs", 404, 5),
            ("POST /api/log", 503, 3),
            ("POST /api/log", 500, 2),
            ("POST /api/log", 200, 0),
        ]);
        assert_eq!((c.total(), c.failed()), (100, 5));
        assert!((c.failed_ratio() - 0.05).abs() < 1e-12);
        assert_eq!(Counts::default().failed_ratio(), 0.0);
        assert_eq!(c.worst(), Some(("POST /api/log", 503, 3)));
        // A tie goes to the first route and status in order.
        let tie = counts(&[("B", 500, 2), ("A", 502, 2), ("A", 500, 2)]);
        assert_eq!(tie.worst(), Some(("A", 500, 2)));
        assert_eq!(counts(&[("A", 200, 9), ("A", 404, 1)]).worst(), None);
    }

    #[test]
    fn a_window_is_the_difference_of_two_samples_and_a_reset_counts_from_zero() {
        let before = counts(&[("A", 200, 100), ("A", 500, 4), ("B", 200, 50)]);
        let after = counts(&[("A", 200, 130), ("A", 500, 4), ("B", 200, 7), ("C", 503, 2)]);
        assert_eq!(
            after.since(&before),
            counts(&[("A", 200, 30), ("B", 200, 7), ("C", 503, 2)])
        );
        assert_eq!(after.since(&Counts::default()), after);
    }

    #[test]
    fn a_new_version_failing_one_route_is_a_breach_that_names_it() {
        let new = counts(&[("GET /api/logs", 200, 60), ("POST /api/log", 500, 40)]);
        let old = counts(&[("GET /api/logs", 200, 300), ("POST /api/log", 201, 200)]);
        let v = judge(&new, &old, &Thresholds::default());
        assert!(v.rolls_back());
        assert_eq!(
            v.to_string(),
            "canary failed real requests: new version 40 of 100 failed (40.0 %), old version 0 of 500 failed (0.0 %); most failed: POST /api/log answered 500 40 times"
        );
    }

    #[test]
    fn failing_like_the_old_version_is_not_the_release_s_fault() {
        // A database outage: both versions answer 503 alike.
        let new = counts(&[("POST /api/log", 503, 30), ("POST /api/log", 201, 70)]);
        let old = counts(&[("POST /api/log", 503, 90), ("POST /api/log", 201, 210)]);
        let v = judge(&new, &old, &Thresholds::default());
        assert!(matches!(v, Verdict::Healthy { .. }), "{v}");
        assert!(!v.rolls_back());
        // Twice the old ratio and above the absolute limit: a breach. Exactly twice: not yet.
        let t = Thresholds::default();
        let old = counts(&[("A", 500, 10), ("A", 200, 190)]); // 5 %
        let at_twice = counts(&[("A", 500, 10), ("A", 200, 90)]); // 10 %
        assert!(!judge(&at_twice, &old, &t).rolls_back());
        let above = counts(&[("A", 500, 11), ("A", 200, 89)]); // 11 %
        assert!(judge(&above, &old, &t).rolls_back());
    }

    #[test]
    fn the_absolute_limit_is_exclusive_and_an_idle_old_version_is_no_reference() {
        let t = Thresholds::default();
        let at_limit = counts(&[("A", 500, 5), ("A", 200, 95)]);
        assert!(!judge(&at_limit, &Counts::default(), &t).rolls_back());
        let above = counts(&[("A", 500, 6), ("A", 200, 94)]);
        // The old version answered too little to compare with: the absolute limit decides.
        let idle_old = counts(&[("A", 500, 10), ("A", 200, 39)]);
        assert!(judge(&above, &idle_old, &t).rolls_back());
        // With enough old traffic at a higher rate, the same share is no breach.
        let busy_old = counts(&[("A", 500, 10), ("A", 200, 40)]);
        assert!(!judge(&above, &busy_old, &t).rolls_back());
    }

    #[test]
    fn too_little_traffic_is_said_and_goes_the_way_it_is_set() {
        let new = counts(&[("A", 500, 49)]);
        let old = counts(&[("A", 200, 400)]);
        let v = judge(&new, &old, &Thresholds::default());
        assert!(!v.rolls_back());
        assert_eq!(
            v.to_string(),
            "too little traffic to judge the canary: the new version answered 49 requests, the old 400; the rollout goes on unjudged"
        );
        let strict = Thresholds {
            too_little: TooLittle::RollBack,
            ..Thresholds::default()
        };
        let v = judge(&new, &old, &strict);
        assert!(v.rolls_back());
        assert!(v.to_string().ends_with("rolling back, as set"), "{v}");
        // Exactly the minimum is enough to judge.
        let v = judge(&counts(&[("A", 200, 50)]), &old, &strict);
        assert_eq!(
            v.to_string(),
            "canary healthy: new version 0 of 50 failed (0.0 %), old version 0 of 400 failed (0.0 %)"
        );
    }
}
