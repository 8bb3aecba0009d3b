//! Live progress of a run: a status line on a terminal (indicatif), plain lines otherwise. Step
//! output is streamed, each line prefixed with its task's name.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use capstan_engine::Observer;
use capstan_store::TaskStatus;
use indicatif::{ProgressBar, ProgressStyle};

pub struct Display {
    bar: Option<ProgressBar>,
    quiet: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    status: HashMap<String, TaskStatus>,
    /// Partial last line per task, so interleaved output from parallel steps stays line-aligned.
    partial: HashMap<String, Vec<u8>>,
}

impl Display {
    pub fn new(quiet: bool) -> Display {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} · {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Display {
            bar,
            quiet,
            state: Mutex::new(State::default()),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let rest: Vec<(String, Vec<u8>)> = state.partial.drain().collect();
        for (task, bytes) in rest {
            if !bytes.is_empty() && !self.quiet {
                self.print(&format!("[{task}] {}", String::from_utf8_lossy(&bytes)));
            }
        }
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }

    fn refresh(&self, state: &State) {
        let Some(bar) = &self.bar else { return };
        let count = |s: TaskStatus| state.status.values().filter(|v| **v == s).count();
        bar.set_message(format!(
            "{} done · {} running · {} cached · {} failed · {} skipped",
            count(TaskStatus::Succeeded),
            count(TaskStatus::Running),
            count(TaskStatus::Cached),
            count(TaskStatus::Failed),
            count(TaskStatus::Skipped),
        ));
    }
}

impl Observer for Display {
    fn task_changed(&self, task: &str, status: TaskStatus, message: Option<&str>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.status.insert(task.to_string(), status);
        if self.bar.is_none()
            || !matches!(
                status,
                TaskStatus::Running | TaskStatus::Succeeded | TaskStatus::Cached
            )
        {
            let line = match message {
                Some(m) => format!("{task}: {status} ({m})"),
                None => format!("{task}: {status}"),
            };
            self.print(&line);
        }
        self.refresh(&state);
    }

    fn log(&self, task: &str, chunk: &[u8]) {
        if self.quiet {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let buf = state.partial.entry(task.to_string()).or_default();
        buf.extend_from_slice(chunk);
        let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = buf.drain(..=last_nl).collect();
        drop(state);
        for line in complete.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            self.print(&format!("[{task}] {}", String::from_utf8_lossy(line)));
        }
    }
}
