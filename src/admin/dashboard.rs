//! The dashboard's page on the admin port: one HTML page, its script and its style sheet,
//! embedded in the binary (no CDN, no font or script from anywhere else: it works on a
//! box without a network). The script polls `/api/stats` (`stats.rs`) and draws with the
//! DOM and inline SVG, building every node with `textContent`, never markup from data.
//!
//! Every admin answer carries [`CSP`] and `X-Content-Type-Options: nosniff`: scripts,
//! styles and fetches from the admin port only, no inline script, no framing.

/// The Content-Security-Policy of every admin answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self'; connect-src 'self'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// The embedded file at `path`, with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX.as_bytes())),
        "/dashboard.js" => Some(("text/javascript; charset=utf-8", SCRIPT.as_bytes())),
        "/dashboard.css" => Some(("text/css; charset=utf-8", STYLE.as_bytes())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_has_no_inline_script() {
        let (_, page) = asset("/").expect("the page");
        let page = std::str::from_utf8(page).expect("utf-8");
        assert!(page.contains("<script src=\"/dashboard.js\""), "{page}");
        assert!(page.contains("href=\"/dashboard.css\""), "{page}");
        // Every script tag has a src (no inline script, which the CSP would block anyway).
        assert_eq!(
            page.matches("<script").count(),
            page.matches("<script src=").count()
        );
        for text in [INDEX, SCRIPT, STYLE] {
            for far in ["http://", "https://", "//cdn", "@import", "url("] {
                // The SVG namespace is a name, not an address that is fetched.
                let hits = text
                    .match_indices(far)
                    .filter(|(at, _)| !text[*at..].starts_with("http://www.w3.org/2000/svg"))
                    .count();
                assert_eq!(hits, 0, "{far} in an embedded file");
            }
        }
        assert!(
            !SCRIPT.contains("innerHTML"),
            "the script builds nodes with textContent"
        );
        assert!(!SCRIPT.contains("eval("));
    }
}
