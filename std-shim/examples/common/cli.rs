//! What the examples' command lines share: `--limit` read by the allocator's own size parser
//! (the one `CTXALLOC_LIMIT` uses), refused when it cannot work.

use ctxalloc::cgroup::AutoLimit;
use ctxalloc::parse::{parse_limit, SIZE_SYNTAX};

/// `--limit`: a size, no limit, or the cgroup's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitArg {
    /// `none`, `off`, `0`.
    None,
    /// A size in bytes, at least [`ctxalloc::MIN_LIMIT`].
    Bytes(usize),
    /// `auto` or `N%`.
    Cgroup(AutoLimit),
}

impl LimitArg {
    /// The clap value parser.
    pub fn parse(v: &str) -> Result<LimitArg, String> {
        if let Some(auto) = AutoLimit::parse(v.as_bytes()) {
            return auto.map(LimitArg::Cgroup).map_err(|()| "a percentage from 1% to 100%".into());
        }
        match parse_limit(v) {
            Ok(None) => Ok(LimitArg::None),
            Ok(Some(b)) => match ctxalloc::LimitError::check(b, ctxalloc::MIN_LIMIT) {
                Ok(()) => Ok(LimitArg::Bytes(b)),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(format!("{e}; expected {SIZE_SYNTAX}, none, auto or a percentage")),
        }
    }
}

/// The arguments both jobs take: the data, the scopes, the watchdog, the output.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Files of data
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub files: u64,
    /// 4 KiB blocks per file
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(8..))]
    pub blocks_per_file: u64,
    /// Drop the scopes, to show the recursion they prevent (exit status 3)
    #[arg(long)]
    pub no_scopes: bool,
    /// Seconds without progress after which the run counts as stuck (exit status 2)
    #[arg(long, default_value_t = 5)]
    pub watchdog: u64,
    /// No progress display (it is drawn only on a terminal anyway)
    #[arg(long)]
    pub quiet: bool,
    /// Print the result as one JSON object on stdout instead of text
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    /// Whether to draw the progress line (never with `--json` or `--quiet`).
    pub fn progress(&self) -> bool {
        !self.quiet && !self.json
    }
}

/// The line both jobs print at the end: peak usage against the limit, and what reclaim and
/// memory shortage did.
pub struct Outcome {
    pub peak: usize,
    pub limit: Option<usize>,
    /// The limit asked for, if the engine raised it (to the usage at the start plus 8 MiB).
    pub asked: Option<usize>,
    pub evicted: u64,
    pub written_back: u64,
    pub flushed: u64,
    pub recycled: u64,
    pub written_through: u64,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "  peak usage {}", mib(self.peak))?;
        match self.limit {
            Some(l) => write!(f, " of a {} limit", mib(l))?,
            None => write!(f, ", no limit")?,
        }
        if let Some(asked) = self.asked.filter(|&a| Some(a) != self.limit) {
            write!(f, " (raised from the {} asked: the usage at the start plus 8 MiB)", mib(asked))?;
        }
        write!(
            f,
            "; reclaim evicted {} blocks and wrote back {}, the flusher wrote {}; short of memory, {} inserts \
             recycled a buffer and {} writes went through",
            self.evicted, self.written_back, self.flushed, self.recycled, self.written_through
        )
    }
}

/// A size in MiB for the examples' text.
pub fn mib(bytes: usize) -> String {
    format!("{} MiB", bytes >> 20)
}
