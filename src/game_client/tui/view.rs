//! Drawing: pure functions of the [`App`] state into a ratatui frame. Nothing here changes state.
//!
//! The map is centred on the predicted player position; other entities are drawn where the last snapshot has
//! them, relative to that. World +y (north) is up on screen, and a map row covers twice the metres of a column
//! because terminal cells are about twice as tall as wide.

use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Gauge, Paragraph, Widget, Wrap};
use ratatui::Frame;

use super::{App, Field, Screen};
use crate::game_client::prediction::Pos;
use crate::game_client::state::{GameState, LogKind, ABILITIES, FLAG_DEAD, FLAG_IN_COMBAT};
use crate::proto::{EntityKind, EntityState};

/// Draws the current screen.
pub(super) fn draw(frame: &mut Frame<'_>, app: &App) {
    match app.screen {
        Screen::Login | Screen::Connecting => draw_login(frame, app),
        Screen::Game => draw_game(frame, app),
        Screen::Ended => {
            draw_game(frame, app);
            draw_ended(frame, app);
        }
    }
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect::new(area.x + (area.width - w) / 2, area.y + (area.height - h) / 2, w, h)
}

fn draw_login(frame: &mut Frame<'_>, app: &App) {
    let form = &app.form;
    let area = centered(frame.area(), 64, 15);
    let title = if form.register { " Realm - create an account " } else { " Realm - log in " };
    let block = Block::bordered().title(title).title_alignment(Alignment::Center);
    let trust = if app.options.insecure {
        Span::styled("NOT verified (--insecure)", Style::new().fg(Color::Red).add_modifier(Modifier::BOLD))
    } else {
        Span::styled("certificate verified", Style::new().fg(Color::Green))
    };
    let field = |label: &str, value: String, focused: bool| {
        let style = if focused { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
        let cursor = if focused && app.screen == Screen::Login { "_" } else { " " };
        Line::from(vec![Span::raw(format!("  {label:<10}")), Span::styled(format!(" {value:<32}{cursor}"), style)])
    };
    let mode = |on: bool, text: &str| {
        let mark = if on { "(*) " } else { "( ) " };
        Span::styled(format!("{mark}{text}   "), if on { Style::new().fg(Color::Yellow) } else { Style::new() })
    };
    let mut lines = vec![
        Line::from(""),
        Line::from(vec![Span::raw(format!("  {:<10} {}  ", "Server", app.options.endpoint.address)), trust]),
        Line::from(""),
        field("Username", form.username.clone(), form.focus == Field::Username),
        field("Password", "*".repeat(form.password.chars().count()), form.focus == Field::Password),
        Line::from(""),
        Line::from(vec![Span::raw("  Mode       "), mode(!form.register, "log in"), mode(form.register, "register")]),
        Line::from(""),
    ];
    if app.screen == Screen::Connecting {
        let who = if form.register { "registering" } else { "logging in" };
        lines.push(Line::styled(
            format!("  connecting to {}, {who} as {}... (Esc cancels)", app.options.endpoint.address, form.username),
            Style::new().fg(Color::Cyan),
        ));
    } else {
        lines.push(Line::styled(
            "  Enter submit  Tab next field  F2 log in/register  Esc quit",
            Style::new().fg(Color::DarkGray),
        ));
    }
    if let Some(error) = &form.error {
        lines.push(Line::from(""));
        lines.push(Line::styled(format!("  {error}"), Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)));
    }
    frame.render_widget(Clear, area);
    frame.render_widget(Paragraph::new(lines).block(block).wrap(Wrap { trim: false }), area);
}

fn draw_ended(frame: &mut Frame<'_>, app: &App) {
    let area = centered(frame.area(), 70, 7);
    let reason = app.last_end.as_ref().map_or_else(|| "the session ended".to_owned(), ToString::to_string);
    let lines = vec![
        Line::from(""),
        Line::styled(format!(" {reason}"), Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)),
        Line::from(""),
        Line::styled(" Enter: back to the login screen    q: quit", Style::new().fg(Color::DarkGray)),
    ];
    frame.render_widget(Clear, area);
    let block = Block::bordered().title(" Disconnected ").border_style(Style::new().fg(Color::Red));
    frame.render_widget(Paragraph::new(lines).block(block).wrap(Wrap { trim: true }), area);
}

fn draw_game(frame: &mut Frame<'_>, app: &App) {
    let state = &app.state;
    let [main, log_area, input_area, status_area] =
        Layout::vertical([Constraint::Min(8), Constraint::Length(9), Constraint::Length(1), Constraint::Length(1)])
            .areas(frame.area());
    let [map_area, side] = Layout::horizontal([Constraint::Min(20), Constraint::Length(40)]).areas(main);

    let zone = state.joined.as_ref().map_or(state.zone.as_str(), |j| j.zone.as_str());
    let map_block = Block::bordered().title(format!(" {zone} - {:.1} m/column ", app.zoom));
    let inner = map_block.inner(map_area);
    frame.render_widget(map_block, map_area);
    frame.render_widget(MapView { state, metres_per_column: app.zoom }, inner);

    draw_side(frame, side, state);
    draw_log(frame, log_area, state);

    let input = match &app.chat_input {
        Some(text) => {
            let (label, body) = match text.strip_prefix("/z ") {
                Some(rest) => ("zone> ", rest),
                None => ("say> ", text.as_str()),
            };
            Line::from(vec![
                Span::styled(label, Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)),
                Span::raw(format!("{body}_")),
                Span::styled("   (Enter send, Esc cancel, /z for zone chat)", Style::new().fg(Color::DarkGray)),
            ])
        }
        None => Line::styled(
            "arrows/WASD move  Space stop  Tab/Shift-Tab target  1 strike  2 firebolt  3 heal  Enter chat (/z zone)  \
             +/- zoom  q quit",
            Style::new().fg(Color::DarkGray),
        ),
    };
    frame.render_widget(Paragraph::new(input), input_area);
    frame.render_widget(Paragraph::new(status_line(app)), status_area);
}

fn status_line(app: &App) -> Line<'static> {
    let state = &app.state;
    let rtt = state.rtt.map_or_else(|| "RTT --".to_owned(), |r| format!("RTT {:.1} ms", r.as_secs_f64() * 1000.0));
    let p = state.position();
    let mut spans = Vec::new();
    // First, so a narrow terminal never cuts it off.
    if app.options.insecure {
        spans.push(Span::styled(" INSECURE TLS ", Style::new().fg(Color::White).bg(Color::Red)));
    }
    spans.extend([
        Span::styled(format!(" {rtt} "), Style::new().fg(Color::Black).bg(Color::Cyan)),
        Span::raw(format!(
            " tick {} | pos ({:.1}, {:.1}) | correction {:.2} m, {} pending | {} entities ({} visible) | {} ",
            state.tick,
            p.x,
            p.y,
            state.predictor.last_correction(),
            state.predictor.pending(),
            state.entities.len(),
            state.total_visible,
            app.options.endpoint.address,
        )),
    ]);
    Line::from(spans)
}

fn hp_colour(hp: i32, max_hp: i32) -> Color {
    let ratio = if max_hp > 0 { hp as f32 / max_hp as f32 } else { 0.0 };
    if ratio > 0.66 {
        Color::Green
    } else if ratio > 0.33 {
        Color::Yellow
    } else {
        Color::Red
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

fn draw_side(frame: &mut Frame<'_>, area: Rect, state: &GameState) {
    let [me_area, target_area, nearby_area] =
        Layout::vertical([Constraint::Length(7), Constraint::Length(6), Constraint::Min(3)]).areas(area);

    // The player: name, level, HP and XP bars. PlayerStats is authoritative; the own entity fills in before it.
    let name = state.joined.as_ref().map_or("", |j| j.username.as_str());
    let own = state.own_entity();
    let (hp, max_hp, level) = match (&state.stats, own) {
        (Some(s), _) => (s.hp, s.max_hp, s.level),
        (None, Some(e)) => (e.hp, e.max_hp, e.level),
        (None, None) => (0, 0, 0),
    };
    let (xp, xp_next) = state.stats.map_or((0, 0), |s| (s.xp, s.xp_to_next));
    let dead = own.is_some_and(|e| e.flags & FLAG_DEAD != 0) || (max_hp > 0 && hp <= 0);
    let combat = own.is_some_and(|e| e.flags & FLAG_IN_COMBAT != 0);
    let block = Block::bordered().title(format!(" {name}  level {level} "));
    let inner = block.inner(me_area);
    frame.render_widget(block, me_area);
    let rows = Layout::vertical([Constraint::Length(1); 5]).split(inner);
    frame.render_widget(
        Gauge::default()
            .gauge_style(Style::new().fg(hp_colour(hp, max_hp)).bg(Color::Black))
            .ratio(ratio(f64::from(hp), f64::from(max_hp)))
            .label(format!("HP {hp}/{max_hp}")),
        rows[0],
    );
    frame.render_widget(
        Gauge::default()
            .gauge_style(Style::new().fg(Color::Magenta).bg(Color::Black))
            .ratio(ratio(xp as f64, xp_next as f64))
            .label(format!("XP {xp}/{xp_next}")),
        rows[2],
    );
    let condition = if dead {
        Span::styled("DEAD - respawning", Style::new().fg(Color::Red).add_modifier(Modifier::BOLD))
    } else if combat {
        Span::styled("in combat", Style::new().fg(Color::Yellow))
    } else {
        Span::styled("at ease", Style::new().fg(Color::DarkGray))
    };
    frame.render_widget(Paragraph::new(Line::from(condition)), rows[4]);

    // The target.
    let block = Block::bordered().title(" Target (Tab) ");
    let inner = block.inner(target_area);
    frame.render_widget(block, target_area);
    let target = state.target.and_then(|t| state.entity(t).map(|e| (t, *e)));
    match target {
        Some((id, e)) => {
            let distance = state.distance_to(id).unwrap_or(f32::NAN);
            let rows = Layout::vertical([Constraint::Length(1); 3]).split(inner);
            frame.render_widget(Paragraph::new(format!("{}  {distance:.1} m", state.name_of(id))), rows[0]);
            frame.render_widget(
                Gauge::default()
                    .gauge_style(Style::new().fg(hp_colour(e.hp, e.max_hp)).bg(Color::Black))
                    .ratio(ratio(f64::from(e.hp), f64::from(e.max_hp)))
                    .label(format!("{}/{}", e.hp, e.max_hp)),
                rows[1],
            );
            let reach: Vec<Span> = ABILITIES
                .iter()
                .filter(|a| a.range > 0.0)
                .map(|a| {
                    let ok = distance <= a.range;
                    let style = if ok { Style::new().fg(Color::Green) } else { Style::new().fg(Color::DarkGray) };
                    Span::styled(format!("{} {} {}  ", a.id, a.name, if ok { "in range" } else { "too far" }), style)
                })
                .collect();
            frame.render_widget(Paragraph::new(Line::from(reach)), rows[2]);
        }
        None => frame.render_widget(
            Paragraph::new("none - Tab selects the nearest NPC").style(Style::new().fg(Color::DarkGray)),
            inner,
        ),
    }

    // Nearby NPCs, nearest first (the Tab order).
    let block = Block::bordered().title(" Nearby ");
    let inner = block.inner(nearby_area);
    frame.render_widget(block, nearby_area);
    let lines: Vec<Line> = state
        .npcs_by_distance()
        .into_iter()
        .take(usize::from(inner.height))
        .filter_map(|(id, d)| state.entity(id).map(|e| (id, d, e)))
        .map(|(id, d, e)| {
            let marker = if state.target == Some(id) { ">" } else { " " };
            Line::styled(
                format!("{marker}npc#{id:<6} lv {:<2} {:>4}/{:<4} {d:>5.1} m", e.level, e.hp, e.max_hp),
                Style::new().fg(hp_colour(e.hp, e.max_hp)),
            )
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_log(frame: &mut Frame<'_>, area: Rect, state: &GameState) {
    let block = Block::bordered().title(" Chat & combat ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let height = usize::from(inner.height);
    let skip = state.log.len().saturating_sub(height);
    let lines: Vec<Line> = state
        .log
        .iter()
        .skip(skip)
        .map(|l| {
            let style = match l.kind {
                LogKind::Say => Style::new().fg(Color::White),
                LogKind::Zone => Style::new().fg(Color::LightBlue),
                LogKind::Combat => Style::new().fg(Color::LightRed),
                LogKind::System => Style::new().fg(Color::Yellow),
            };
            if l.count > 1 {
                Line::styled(format!("{} (x{})", l.text, l.count), style)
            } else {
                Line::styled(l.text.clone(), style)
            }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

/// The map around the player.
struct MapView<'a> {
    state: &'a GameState,
    metres_per_column: f32,
}

impl MapView<'_> {
    /// The screen cell of a world position, if it is inside `area`.
    fn cell(&self, area: Rect, centre: Pos, p: Pos) -> Option<(u16, u16)> {
        let col = (f32::from(area.width) / 2.0 + (p.x - centre.x) / self.metres_per_column).floor();
        let row = (f32::from(area.height) / 2.0 - (p.y - centre.y) / (2.0 * self.metres_per_column)).floor();
        let inside = col >= 0.0 && row >= 0.0 && col < f32::from(area.width) && row < f32::from(area.height);
        inside.then(|| (area.x + col as u16, area.y + row as u16))
    }

    fn glyph(&self, e: &EntityState) -> (char, Style) {
        let dead = e.flags & FLAG_DEAD != 0 || e.hp <= 0;
        if dead {
            return ('x', Style::new().fg(Color::DarkGray));
        }
        if e.kind == EntityKind::Npc as i32 {
            // Level 1..=9 as its digit; higher levels (and a nonsensical 0) as '*'.
            let c = char::from_digit(e.level, 10).filter(|_| e.level > 0).unwrap_or('*');
            (c, Style::new().fg(hp_colour(e.hp, e.max_hp)).add_modifier(Modifier::BOLD))
        } else {
            let c = self.state.names.get(&e.id).and_then(|n| n.chars().next()).map_or('P', |c| c.to_ascii_uppercase());
            (c, Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD))
        }
    }
}

impl Widget for MapView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width == 0 || area.height == 0 {
            return;
        }
        let centre = self.state.position();
        let (mpc, mpr) = (self.metres_per_column, 2.0 * self.metres_per_column);
        // Background: a dot wherever a 10 m grid line crosses a cell (it scrolls as the player walks), and
        // hatching beyond the zone's lower edges.
        for row in 0..area.height {
            for col in 0..area.width {
                let x = centre.x + (f32::from(col) - f32::from(area.width) / 2.0) * mpc;
                let y = centre.y - (f32::from(row) - f32::from(area.height) / 2.0) * mpr;
                let Some(cell) = buf.cell_mut((area.x + col, area.y + row)) else { continue };
                if x < 0.0 || y < 0.0 {
                    cell.set_char('░').set_style(Style::new().fg(Color::DarkGray));
                } else if (x / 10.0).floor() != ((x + mpc) / 10.0).floor()
                    && (y / 10.0).floor() != ((y - mpr) / 10.0).floor()
                {
                    cell.set_char('·').set_style(Style::new().fg(Color::DarkGray));
                }
            }
        }
        let me = self.state.joined.as_ref().map(|j| j.entity_id);
        // Dead first, then living NPCs, then players: the more important glyph wins a shared cell.
        let mut order: Vec<&EntityState> = self.state.entities.iter().filter(|e| Some(e.id) != me).collect();
        order.sort_by_key(|e| (e.flags & FLAG_DEAD == 0 && e.hp > 0, e.kind == EntityKind::Player as i32));
        for e in order {
            let Some(pos) = e.position.map(Pos::from) else { continue };
            let Some((x, y)) = self.cell(area, centre, pos) else { continue };
            let (c, mut style) = self.glyph(e);
            if self.state.target == Some(e.id) {
                style = style.add_modifier(Modifier::REVERSED);
            }
            if let Some(cell) = buf.cell_mut((x, y)) {
                cell.set_char(c).set_style(style);
            }
        }
        if let Some((x, y)) = self.cell(area, centre, centre) {
            let dead = self.state.own_entity().is_some_and(|e| e.flags & FLAG_DEAD != 0);
            let style = if dead {
                Style::new().fg(Color::DarkGray)
            } else {
                Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
            };
            if let Some(cell) = buf.cell_mut((x, y)) {
                cell.set_char('@').set_style(style);
            }
        }
    }
}
