//! `netpath top`: the live terminal view (ratatui), or plain-text snapshots
//! for scripts.
use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Style, Stylize},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Table},
};

use super::{
    CliError, Result,
    args::{TopArgs, TopSort},
    output::{self, Column, Output},
};
use crate::{
    directories::Instance,
    tables::Tables,
    top::{self, FlowRate, Sample, SortBy, TopView, short, short_count},
};

impl From<TopSort> for SortBy {
    fn from(sort: TopSort) -> Self {
        match sort {
            TopSort::Packets => Self::Packets,
            TopSort::Bytes => Self::Bytes,
            TopSort::Source => Self::Source,
        }
    }
}

pub(super) fn run(instance: &Instance, args: TopArgs, out: Output) -> Result<()> {
    let interval = Duration::try_from_secs_f64(args.interval)
        .ok()
        .filter(|i| (0.1..=3600.0).contains(&i.as_secs_f64()))
        .ok_or_else(|| CliError::BadInput {
            what: "--interval",
            value: args.interval.to_string(),
            hint: "seconds between 0.1 and 3600".to_owned(),
        })?;
    let tables = Tables::open(instance)?;
    let mut top = Top {
        tables,
        sort: args.sort.into(),
        interval,
        last: None,
    };
    if args.iterations.is_some() || out.json || !std::io::stdout().is_terminal() {
        snapshots(&mut top, args.iterations, args.limit, out)
    } else {
        live(&mut top, instance)
    }
}

/// The maps and the previous read the next rates are computed against.
struct Top {
    tables: Tables,
    sort: SortBy,
    interval: Duration,
    last: Option<Sample>,
}

impl Top {
    /// Reads the maps and compares with the previous read (the first call
    /// reads twice, an interval apart).
    fn next(&mut self) -> Result<TopView> {
        let earlier = match self.last.take() {
            Some(sample) => sample,
            None => {
                let sample = Sample::read(&self.tables)?;
                std::thread::sleep(self.interval);
                sample
            }
        };
        let later = Sample::read(&self.tables)?;
        let view = top::compare(
            &earlier,
            &later,
            self.tables.conntrack_capacity::<u32>()
                + self.tables.conntrack_capacity::<netpath_common::Ip6>(),
            self.sort,
        );
        self.last = Some(later);
        Ok(view)
    }
}

fn snapshots(
    top: &mut Top,
    iterations: Option<u64>,
    limit: Option<usize>,
    out: Output,
) -> Result<()> {
    let mut done = 0;
    while iterations.is_none_or(|n| done < n) {
        if done > 0 {
            std::thread::sleep(top.interval);
        }
        let mut view = top.next()?;
        if let Some(limit) = limit {
            view.flows.truncate(limit);
        }
        out.show(&view, print_snapshot)?;
        done += 1;
    }
    Ok(())
}

/// The flow columns, for text snapshots and the live table.
const FLOW_COLUMNS: [Column; 9] = [
    Column::left("PROTO", 5),
    Column::left("KIND", 10),
    Column::left("ORIGINAL", 44),
    Column::left("TRANSLATED", 44),
    Column::left("STATE", 12),
    Column::right("PKT/S", 7),
    Column::right("BYTES/S", 7),
    Column::right("PKTS", 7),
    Column::right("BYTES", 7),
];

fn flow_cells(f: &FlowRate) -> [String; 9] {
    [
        f.flow.proto.to_owned(),
        f.flow.kind.to_owned(),
        f.flow.original.to_string(),
        f.flow.translated.to_string(),
        f.flow.state.to_owned(),
        short(f.packets_per_sec),
        short(f.bytes_per_sec),
        short_count(f.packets()),
        short_count(f.bytes()),
    ]
}

fn summary(view: &TopView) -> String {
    format!(
        "flows {}/{}, sorted by {}, rates over {:.1} s",
        view.conntrack_entries,
        view.conntrack_capacity,
        view.sort.name(),
        view.interval_secs
    )
}

/// Counters that moved at least once (the others are noise here).
fn counters_seen(view: &TopView) -> impl Iterator<Item = &top::CounterRate> {
    view.counters.iter().filter(|c| c.value > 0)
}

fn print_snapshot(view: &TopView) {
    println!("{}", summary(view));
    output::Table {
        columns: FLOW_COLUMNS,
        separator: " ",
    }
    .print(view.flows.iter().map(flow_cells));
    println!();
    output::Table {
        columns: [
            Column::left("COUNTER", 24),
            Column::right("TOTAL", 10),
            Column::right("PER SEC", 8),
        ],
        separator: " ",
    }
    .print(counters_seen(view).map(|c| [c.name.to_owned(), c.value.to_string(), short(c.per_sec)]));
}

/// The live view until q, Esc or Ctrl-C.
fn live(top: &mut Top, instance: &Instance) -> Result<()> {
    // Read before taking over the terminal, so a failure prints normally.
    let mut view = top.next()?;
    let mut terminal = ratatui::try_init().map_err(CliError::Terminal)?;
    let result = live_loop(&mut terminal, top, instance, &mut view);
    ratatui::restore();
    result
}

fn live_loop(
    terminal: &mut DefaultTerminal,
    top: &mut Top,
    instance: &Instance,
    view: &mut TopView,
) -> Result<()> {
    let mut next_read = Instant::now() + top.interval;
    loop {
        terminal
            .draw(|frame| draw(frame, instance, view))
            .map_err(CliError::Terminal)?;
        let left = next_read.saturating_duration_since(Instant::now());
        if event::poll(left).map_err(CliError::Terminal)? {
            if let Event::Key(key) = event::read().map_err(CliError::Terminal)? {
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                let sort = match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Char('p') => SortBy::Packets,
                    KeyCode::Char('b') => SortBy::Bytes,
                    KeyCode::Char('s') => SortBy::Source,
                    _ => continue,
                };
                top.sort = sort;
                view.sort = sort;
                top::sort_flows(&mut view.flows, sort);
            }
            continue;
        }
        *view = top.next()?;
        next_read = Instant::now() + top.interval;
    }
}

fn draw(frame: &mut Frame<'_>, instance: &Instance, view: &TopView) {
    // The counters below the flows, as tall as they need up to a third of
    // the screen: the flows get the full width.
    let counters_height = counters_seen(view).count() as u16 + 3;
    let [head, flows_area, counters_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(counters_height.min(frame.area().height / 3)),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            format!("netpath top, instance {instance}: ").bold(),
            summary(view).into(),
            "   p/b/s: sort by packets/bytes/source, q: quit".dim(),
        ])),
        head,
    );
    let row = |cells: [String; 9]| {
        Row::new(FLOW_COLUMNS.iter().zip(cells).map(|(column, cell)| {
            let line = Line::from(cell);
            Cell::from(if column.is_right_aligned() {
                line.right_aligned()
            } else {
                line
            })
        }))
    };
    let header = row(FLOW_COLUMNS.map(|c| c.header().to_owned())).bold();
    let rows = view.flows.iter().map(|f| row(flow_cells(f)));
    let widths = FLOW_COLUMNS.map(|c| Constraint::Length(c.width() as u16));
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" flows ")),
        flows_area,
    );
    let counter_rows = counters_seen(view).map(|c| {
        let style = if c.name.starts_with("drop_") && c.per_sec > 0.0 {
            Style::new().red()
        } else {
            Style::new()
        };
        Row::new([
            Cell::from(c.name),
            Cell::from(Line::from(c.value.to_string()).right_aligned()),
            Cell::from(Line::from(short(c.per_sec)).right_aligned()),
        ])
        .style(style)
    });
    frame.render_widget(
        Table::new(
            counter_rows,
            [
                Constraint::Length(24),
                Constraint::Length(9),
                Constraint::Length(7),
            ],
        )
        .header(
            Row::new([
                Cell::from("COUNTER"),
                Cell::from(Line::from("TOTAL").right_aligned()),
                Cell::from(Line::from("/S").right_aligned()),
            ])
            .bold(),
        )
        .block(Block::bordered().title(" counters ")),
        counters_area,
    );
}
