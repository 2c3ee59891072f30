//! The plot: transport CPU per frame (producer + consumer, medians) against frame size, one line
//! per path, pattern source, log-log axes. Plain SVG text (no fonts or system libraries needed).

use crate::report::Measured;
use std::fmt::Write as _;

const W: f64 = 820.0;
const H: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// (frame size in MB, µs per frame, size label).
type Point = (f64, f64, String);

fn colour(path: &str) -> &'static str {
    match path {
        "dmabuf" => "#1b9e77",
        "memfd-zero-copy" => "#7570b3",
        "memcpy" => "#d95f02",
        "socket-copy" => "#e7298a",
        _ => "#666666",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document.
pub fn svg(m: &Measured) -> String {
    let mut series: Vec<(String, Vec<Point>)> = Vec::new();
    for e in m
        .entries
        .iter()
        .filter(|e| e.source == "pattern" && e.error.is_none())
    {
        let y = e.transport_us().max(0.01);
        let x = e.frame_bytes as f64 / 1e6;
        let label = format!("{}x{}", e.width, e.height);
        match series.iter_mut().find(|(p, _)| *p == e.path) {
            Some((_, pts)) => pts.push((x, y, label)),
            None => series.push((e.path.clone(), vec![(x, y, label)])),
        }
    }
    for (_, pts) in &mut series {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, y, _)| (*x, *y)))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">Transport CPU per frame (producer + consumer, medians) against frame size</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0
    );
    if all.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">no pattern runs</text></svg>"#,
            W / 2.0,
            H / 2.0
        );
        return out;
    }
    let lx = |v: f64| v.log10();
    let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(lx(p.0)), b.max(lx(p.0)))
    });
    let (mut y0, mut y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(lx(p.1)), b.max(lx(p.1)))
    });
    x0 = (x0 - 0.1).min(x1 - 0.5);
    x1 += 0.1;
    y0 = y0.floor();
    y1 = y1.ceil().max(y0 + 1.0);
    let px = |x: f64| LEFT + (lx(x) - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (lx(y) - y0) / (y1 - y0) * (H - TOP - BOTTOM);
    // Axes and grid: decades on y, the measured sizes on x.
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    let mut d = y0 as i32;
    while d <= y1 as i32 {
        let v = 10f64.powi(d);
        let y = py(v);
        let label = if v >= 1.0 {
            format!("{v:.0}")
        } else {
            format!("{v}")
        };
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
        d += 1;
    }
    let mut xs: Vec<(f64, String)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _, l)| (*x, l.clone())))
        .collect();
    xs.sort_by(|a, b| a.0.total_cmp(&b.0));
    xs.dedup_by(|a, b| a.1 == b.1);
    for (x, l) in &xs {
        let xp = px(*x);
        let _ = writeln!(
            out,
            r##"<line x1="{xp:.1}" x2="{xp:.1}" y1="{TOP}" y2="{}" stroke="#eee"/><text x="{xp:.1}" y="{}" text-anchor="middle">{l}</text><text x="{xp:.1}" y="{}" text-anchor="middle" fill="#555">{x:.1} MB</text>"##,
            H - BOTTOM,
            H - BOTTOM + 16.0,
            H - BOTTOM + 30.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">frame size (NV12, log scale)</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(20 {}) rotate(-90)" text-anchor="middle">µs of CPU per frame (log scale)</text>"#,
        TOP + (H - TOP - BOTTOM) / 2.0
    );
    for (i, (path, pts)) in series.iter().enumerate() {
        let c = colour(path);
        let line: Vec<String> = pts
            .iter()
            .map(|(x, y, _)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2.5"/>"#,
            line.join(" ")
        );
        for (x, y, l) in pts {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{c}"><title>{} {l}: {y:.1} µs</title></circle>"#,
                px(*x),
                py(*y),
                esc(path)
            );
        }
        let ly = TOP + 20.0 + i as f64 * 22.0;
        let lx0 = W - RIGHT + 16.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx0}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2.5"/><text x="{}" y="{}">{}</text>"#,
            lx0 + 24.0,
            lx0 + 30.0,
            ly + 4.0,
            esc(path)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" font-size="10" fill="#555">{}</text>"##,
        W - RIGHT + 16.0,
        H - BOTTOM,
        esc(&m.machine.date_utc)
    );
    out.push_str("</svg>\n");
    out
}
