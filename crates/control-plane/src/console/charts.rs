//! Charts as SVG drawn on the server (plotters, SVG backend only): readable without
//! JavaScript, and nothing in them comes from a user unsanitized (labels are cut to
//! a safe alphabet before they reach the SVG).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Statuses in stacking order (bottom first) and their colours.
const STATUSES: &[(&str, RGBColor)] = &[
    ("success", RGBColor(46, 160, 67)),
    ("partial_success", RGBColor(139, 195, 74)),
    ("validation_error", RGBColor(255, 193, 7)),
    ("execution_error", RGBColor(220, 53, 69)),
    ("timeout", RGBColor(253, 126, 20)),
    ("rate_limited", RGBColor(111, 66, 193)),
    ("permission_denied", RGBColor(73, 80, 87)),
    ("circuit_open", RGBColor(214, 51, 132)),
];

/// A label as it may appear in a chart: letters, digits and a few separators only.
fn label(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | ':' | '/'))
        .take(24)
        .collect()
}

fn colour_of(status: &str) -> RGBColor {
    STATUSES
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(RGBColor(108, 117, 125), |(_, c)| *c)
}

/// Calls per `bucket` minutes over the `hours` before `now`, stacked by status.
pub fn calls_by_status(minutes: &[(DateTime<Utc>, String, u64)], now: DateTime<Utc>, hours: i64) -> String {
    const BUCKET: i64 = 10;
    let start = now - Duration::hours(hours);
    let n = usize::try_from(hours * 60 / BUCKET).unwrap_or(1).max(1);
    let mut series: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let order = |s: &str| STATUSES.iter().position(|(n, _)| *n == s).unwrap_or(STATUSES.len());
    let mut names: HashMap<usize, String> = HashMap::new();
    for (at, status, calls) in minutes {
        let offset = (*at - start).num_minutes();
        let Ok(i) = usize::try_from(offset / BUCKET) else {
            continue;
        };
        if i >= n {
            continue;
        }
        let k = order(status);
        names.entry(k).or_insert_with(|| status.clone());
        // Per minute: the bucket's calls over its minutes.
        series.entry(k).or_insert_with(|| vec![0.0; n])[i] += *calls as f64 / BUCKET as f64;
    }
    let mut stacked: Vec<(String, Vec<f64>)> = Vec::new();
    let mut running = vec![0.0; n];
    for (k, values) in &series {
        for (r, v) in running.iter_mut().zip(values) {
            *r += v;
        }
        stacked.push((names.get(k).cloned().unwrap_or_default(), running.clone()));
    }
    let top = running.iter().copied().fold(0.0, f64::max).max(1.0) * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 300)).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .margin(12)
                .x_label_area_size(28)
                .y_label_area_size(48)
                .build_cartesian_2d(0..n, 0.0..top)?;
            chart
                .configure_mesh()
                .x_labels(13)
                .x_label_formatter(&|i| {
                    let t = start + Duration::minutes(i64::try_from(*i).unwrap_or(0) * BUCKET);
                    t.format("%H:%M").to_string()
                })
                .y_desc("calls / min")
                .light_line_style(RGBColor(240, 240, 240))
                .draw()?;
            // Highest first, so each lower band is painted over the one above it.
            for (status, values) in stacked.iter().rev() {
                let c = colour_of(status);
                chart
                    .draw_series(AreaSeries::new(
                        values.iter().enumerate().map(|(i, v)| (i, *v)),
                        0.0,
                        c.mix(0.85),
                    ))?
                    .label(label(status))
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
            }
            if !stacked.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(200, 200, 200))
                    .draw()?;
            }
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            tracing::warn!(error = %e, "console: could not draw the calls chart");
        }
    }
    svg
}

/// Success rate (bars) per task category.
pub fn success_by_category(rows: &[(String, f64, u64)]) -> String {
    let mut svg = String::new();
    if rows.is_empty() {
        return svg;
    }
    let names: Vec<String> = rows
        .iter()
        .map(|(c, _, _)| label(if c.is_empty() { "(none)" } else { c }))
        .collect();
    let n = rows.len() as f64;
    {
        let root = SVGBackend::with_string(&mut svg, (640, 260)).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .margin(12)
                .x_label_area_size(28)
                .y_label_area_size(48)
                .build_cartesian_2d(0.0..n, 0.0..1.05)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_desc("success rate")
                .light_line_style(RGBColor(240, 240, 240))
                .draw()?;
            let bar = RGBColor(13, 110, 253).mix(0.8).filled();
            chart.draw_series(rows.iter().enumerate().map(|(i, (_, rate, _))| {
                let x = i as f64;
                Rectangle::new([(x + 0.15, 0.0), (x + 0.85, *rate)], bar)
            }))?;
            let font = ("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top));
            chart.draw_series(names.iter().enumerate().map(|(i, name)| {
                EmptyElement::at((i as f64 + 0.5, 0.0)) + Text::new(name.clone(), (0, 6), font.clone())
            }))?;
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            tracing::warn!(error = %e, "console: could not draw the effectiveness chart");
        }
    }
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_no_markup() {
        assert_eq!(label("<script>alert(1)</script>"), "scriptalert1/script");
        assert_eq!(label("\"><img onerror=x>"), "img onerrorx");
    }

    #[test]
    fn the_calls_chart_is_svg_with_a_band_per_status() {
        let now = Utc::now();
        let rows = vec![
            (now - Duration::minutes(5), "success".to_owned(), 30),
            (now - Duration::minutes(5), "rate_limited".to_owned(), 4),
        ];
        let svg = calls_by_status(&rows, now, 24);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains("success") && svg.contains("rate_limited"));
        assert!(!svg.contains("<script"));
    }
}
