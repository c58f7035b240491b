//! Progress bars for long commands (epoch roll, backup, restore, verify, export, archive, the load
//! tool's loading phase), drawn on stderr by `indicatif` only when it is a terminal: scripts and
//! pipes see the commands' own output and nothing else.

use indicatif::{ProgressBar, ProgressStyle};

fn styled(total: u64, message: &'static str, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// A bar counting bytes out of `total`.
pub fn bytes(total: u64, message: &'static str) -> ProgressBar {
    styled(
        total,
        message,
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})",
    )
}

/// A bar counting items (keys, records, subjects) out of `total`.
pub fn items(total: u64, message: &'static str) -> ProgressBar {
    styled(
        total,
        message,
        "{msg} [{bar:30}] {human_pos}/{human_len} ({per_sec}, {eta})",
    )
}
