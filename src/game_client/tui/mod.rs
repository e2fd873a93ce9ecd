//! The interactive terminal client (ratatui + crossterm): a login/register form, then the game view. The UI
//! thread only draws, reads keys and drains the network threads' channel; it never touches a socket.
//!
//! Invariant: the terminal is restored (raw mode off, main screen back, cursor shown, keyboard flags popped) on
//! every way out — normal return, error, and panic — by [`TerminalGuard`]'s `Drop` and the panic hook it installs.
//! Anything printed for the player after the UI ends goes out after the guard is dropped.

mod view;

use std::io::{self, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossterm::event::{
    self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, KeyboardEnhancementFlags, PopKeyboardEnhancementFlags,
    PushKeyboardEnhancementFlags,
};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use crate::proto::ChatChannel;

use super::net::{Credentials, Endpoint, NetEvent, NetSession, SessionEnd};
use super::prediction::Pos;
use super::state::{GameState, ABILITIES};

/// Redraw at least this often (the map moves with snapshots).
const FRAME: Duration = Duration::from_millis(33);
/// A single key press (no key-release reporting) walks this long: a short, predictable step.
const TAP: Duration = Duration::from_millis(450);
/// Auto-repeat of a held key extends the walk by this much past the repeat.
const REPEAT: Duration = Duration::from_millis(200);
/// With key-release reporting, a held key walks until released (bounded in case a release is lost).
const HELD: Duration = Duration::from_secs(5);
/// The longest chat line the server accepts, in bytes.
const MAX_CHAT: usize = 256;

/// How the interactive client starts.
pub struct TuiOptions {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Account name from the command line.
    pub username: Option<String>,
    /// Password from the environment.
    pub password: Option<String>,
    /// Start in "create account" mode.
    pub register: bool,
    /// Certificate verification is off (shown on screen).
    pub insecure: bool,
}

/// Why the terminal UI stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TuiError {
    /// The terminal could not be set up or drawn.
    #[error("terminal: {0}")]
    Terminal(#[from] io::Error),
}

static KEYBOARD_FLAGS_PUSHED: AtomicBool = AtomicBool::new(false);
/// Set while the UI owns the terminal, so the panic hook (which outlives the guard) restores only then.
static TERMINAL_ACTIVE: AtomicBool = AtomicBool::new(false);

/// Owns the terminal in raw mode on the alternate screen; restores it on drop and on panic.
pub struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    /// The terminal reports key releases (held keys walk until released).
    pub key_release: bool,
}

fn restore_terminal() {
    if !TERMINAL_ACTIVE.swap(false, Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout();
    if KEYBOARD_FLAGS_PUSHED.swap(false, Ordering::Relaxed) {
        let _ = execute!(out, PopKeyboardEnhancementFlags);
    }
    let _ = execute!(out, LeaveAlternateScreen, cursor::Show);
    let _ = terminal::disable_raw_mode();
}

impl TerminalGuard {
    /// Enters raw mode and the alternate screen, and installs the panic hook that undoes both.
    pub fn enter() -> Result<Self, io::Error> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        terminal::enable_raw_mode()?;
        TERMINAL_ACTIVE.store(true, Ordering::Relaxed);
        let mut out = io::stdout();
        if let Err(e) = execute!(out, EnterAlternateScreen, cursor::Hide) {
            restore_terminal();
            return Err(e);
        }
        let key_release = matches!(terminal::supports_keyboard_enhancement(), Ok(true))
            && execute!(
                out,
                PushKeyboardEnhancementFlags(
                    KeyboardEnhancementFlags::DISAMBIGUATE_ESCAPE_CODES | KeyboardEnhancementFlags::REPORT_EVENT_TYPES
                )
            )
            .is_ok();
        KEYBOARD_FLAGS_PUSHED.store(key_release, Ordering::Relaxed);
        match Terminal::new(CrosstermBackend::new(out)) {
            Ok(terminal) => Ok(Self { terminal, key_release }),
            Err(e) => {
                restore_terminal();
                Err(e)
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Which screen is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Screen {
    Login,
    Connecting,
    Game,
    /// The session ended; the reason is on screen until the player goes back to the login form or quits.
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Username,
    Password,
}

/// The login/register form.
struct LoginForm {
    username: String,
    password: String,
    focus: Field,
    register: bool,
    error: Option<String>,
}

/// One movement axis: direction (-1/+1) and until when it is held.
#[derive(Debug, Clone, Copy, Default)]
struct Axis {
    sign: f32,
    until: Option<Instant>,
}

impl Axis {
    fn value(&self, now: Instant) -> f32 {
        match self.until {
            Some(t) if t > now => self.sign,
            _ => 0.0,
        }
    }

    fn press(&mut self, sign: f32, now: Instant, key_release: bool, repeat: bool) {
        let active = self.value(now) == sign;
        let hold = if key_release {
            HELD
        } else if active || repeat {
            REPEAT
        } else {
            TAP
        };
        let until = now + hold;
        self.until = Some(match self.until {
            Some(t) if active && t > until => t,
            _ => until,
        });
        self.sign = sign;
    }

    fn release(&mut self, sign: f32) {
        if self.sign == sign {
            self.until = None;
        }
    }
}

struct App {
    options: TuiOptions,
    key_release: bool,
    screen: Screen,
    form: LoginForm,
    session: Option<NetSession>,
    state: GameState,
    /// `Some` while the player types a chat line.
    chat_input: Option<String>,
    x_axis: Axis,
    y_axis: Axis,
    sent_direction: Option<Pos>,
    /// Metres per map column (rows are twice as tall).
    zoom: f32,
    quit: bool,
    last_end: Option<SessionEnd>,
}

impl App {
    fn new(options: TuiOptions, key_release: bool) -> Self {
        let form = LoginForm {
            username: options.username.clone().unwrap_or_default(),
            password: options.password.clone().unwrap_or_default(),
            focus: if options.username.is_some() { Field::Password } else { Field::Username },
            register: options.register,
            error: None,
        };
        Self {
            options,
            key_release,
            screen: Screen::Login,
            form,
            session: None,
            state: GameState::new(),
            chat_input: None,
            x_axis: Axis::default(),
            y_axis: Axis::default(),
            sent_direction: None,
            // 1.5 m per column shows about the server's 60 m view radius across an 80-column map.
            zoom: 1.5,
            quit: false,
            last_end: None,
        }
    }

    fn submit(&mut self) {
        let username = self.form.username.trim().to_owned();
        if username.is_empty() || self.form.password.is_empty() {
            self.form.error = Some("enter a username and a password".into());
            self.form.focus = if username.is_empty() { Field::Username } else { Field::Password };
            return;
        }
        let password = self.form.password.clone();
        let credentials = if self.form.register {
            Credentials::Register { username, password }
        } else {
            Credentials::Login { username, password }
        };
        let client_name = concat!("realm-client/", env!("CARGO_PKG_VERSION"));
        match NetSession::start(self.options.endpoint.clone(), credentials, client_name) {
            Ok(session) => {
                self.session = Some(session);
                self.state = GameState::new();
                self.form.error = None;
                self.screen = Screen::Connecting;
            }
            Err(e) => self.form.error = Some(format!("cannot start the network thread: {e}")),
        }
    }

    fn drain_network(&mut self) {
        let Some(session) = &self.session else { return };
        let events: Vec<NetEvent> = session.events().try_iter().collect();
        for event in events {
            self.state.apply(&event);
            match event {
                NetEvent::Joined(_) => {
                    self.screen = Screen::Game;
                    self.sent_direction = None;
                    // The account exists now: logging in again after a disconnect must not register.
                    self.form.register = false;
                }
                NetEvent::Ended(end) => {
                    self.session = None;
                    self.chat_input = None;
                    if self.screen == Screen::Connecting {
                        // Refused before entering the game: back to the form with the reason.
                        self.screen = Screen::Login;
                        self.form.error = Some(end.to_string());
                        if matches!(end, SessionEnd::LoginRefused { .. }) {
                            self.form.password.clear();
                            self.form.focus = Field::Password;
                        }
                    } else {
                        self.screen = Screen::Ended;
                    }
                    self.last_end = Some(end);
                    return;
                }
                _ => {}
            }
        }
    }

    fn update_movement(&mut self) {
        let Some(session) = &self.session else { return };
        if self.screen != Screen::Game {
            return;
        }
        let now = Instant::now();
        let (x, y) = (self.x_axis.value(now), self.y_axis.value(now));
        let direction = (x != 0.0 || y != 0.0).then(|| Pos::new(x, y).clamped_direction());
        if direction != self.sent_direction {
            session.set_movement(direction);
            self.sent_direction = direction;
        }
    }

    fn on_key(&mut self, key: KeyEvent) {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        match self.screen {
            Screen::Login => self.on_login_key(key),
            Screen::Connecting => {
                if key.kind == KeyEventKind::Press && key.code == KeyCode::Esc {
                    // Dropping the session abandons the attempt.
                    self.session = None;
                    self.screen = Screen::Login;
                    self.form.error = Some("cancelled".into());
                }
            }
            Screen::Game => self.on_game_key(key),
            Screen::Ended => match key.code {
                _ if key.kind == KeyEventKind::Release => {}
                KeyCode::Enter => {
                    self.screen = Screen::Login;
                    self.form.error = self.last_end.as_ref().map(ToString::to_string);
                }
                KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
                _ => {}
            },
        }
    }

    fn on_login_key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Esc => self.quit = true,
            KeyCode::Enter => match self.form.focus {
                Field::Username if self.form.password.is_empty() => self.form.focus = Field::Password,
                _ => self.submit(),
            },
            KeyCode::Tab | KeyCode::BackTab | KeyCode::Up | KeyCode::Down => {
                self.form.focus = match self.form.focus {
                    Field::Username => Field::Password,
                    Field::Password => Field::Username,
                }
            }
            KeyCode::F(2) => self.form.register = !self.form.register,
            KeyCode::Char('r') if ctrl => self.form.register = !self.form.register,
            KeyCode::Backspace => {
                match self.form.focus {
                    Field::Username => self.form.username.pop(),
                    Field::Password => self.form.password.pop(),
                };
            }
            KeyCode::Char(c) if !ctrl && !c.is_control() => match self.form.focus {
                Field::Username if self.form.username.len() < 32 => self.form.username.push(c),
                Field::Password if self.form.password.len() < 128 => self.form.password.push(c),
                _ => {}
            },
            _ => {}
        }
    }

    fn on_game_key(&mut self, key: KeyEvent) {
        if let Some(input) = &mut self.chat_input {
            if key.kind == KeyEventKind::Release {
                return;
            }
            match key.code {
                KeyCode::Esc => self.chat_input = None,
                KeyCode::Enter => {
                    let line = std::mem::take(input);
                    self.chat_input = None;
                    self.send_chat(&line);
                }
                KeyCode::Backspace => {
                    input.pop();
                }
                KeyCode::Char(c) if !c.is_control() && input.len() + c.len_utf8() <= MAX_CHAT + 3 => input.push(c),
                _ => {}
            }
            return;
        }
        let now = Instant::now();
        let axis = match key.code {
            KeyCode::Up | KeyCode::Char('w' | 'W') => Some((false, 1.0)),
            KeyCode::Down | KeyCode::Char('s' | 'S') => Some((false, -1.0)),
            KeyCode::Right | KeyCode::Char('d' | 'D') => Some((true, 1.0)),
            KeyCode::Left | KeyCode::Char('a' | 'A') => Some((true, -1.0)),
            _ => None,
        };
        if let Some((horizontal, sign)) = axis {
            let target = if horizontal { &mut self.x_axis } else { &mut self.y_axis };
            match key.kind {
                KeyEventKind::Release => target.release(sign),
                KeyEventKind::Repeat => target.press(sign, now, self.key_release, true),
                KeyEventKind::Press => target.press(sign, now, self.key_release, false),
            }
            return;
        }
        if key.kind == KeyEventKind::Release {
            return;
        }
        match key.code {
            KeyCode::Char(' ') => {
                self.x_axis = Axis::default();
                self.y_axis = Axis::default();
            }
            KeyCode::Tab | KeyCode::BackTab => {
                let target = self.state.cycle_target(key.code == KeyCode::Tab);
                if target.is_none() {
                    self.system_line("no living NPC in sight");
                }
            }
            KeyCode::Char(c @ '1'..='3') => self.use_ability(u32::from(c as u8 - b'0')),
            KeyCode::Enter => self.chat_input = Some(String::new()),
            KeyCode::Char('+' | '=') => self.zoom = (self.zoom / 1.5).max(0.25),
            KeyCode::Char('-' | '_') => self.zoom = (self.zoom * 1.5).min(8.0),
            KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
            _ => {}
        }
    }

    fn system_line(&mut self, text: &str) {
        self.state.note(text);
    }

    fn use_ability(&mut self, id: u32) {
        let Some(ability) = ABILITIES.iter().find(|a| a.id == id).copied() else { return };
        let target = if ability.range == 0.0 {
            0
        } else {
            match self.state.target {
                Some(t) => t,
                None => {
                    self.system_line(&format!("{}: no target (Tab selects the nearest NPC)", ability.name));
                    return;
                }
            }
        };
        if let Some(session) = &self.session {
            session.use_ability(id, target);
        }
    }

    fn send_chat(&mut self, line: &str) {
        let (channel, text) = if let Some(rest) = line.strip_prefix("/z ") {
            (ChatChannel::Zone, rest)
        } else if let Some(rest) = line.strip_prefix("/s ") {
            (ChatChannel::Say, rest)
        } else {
            (ChatChannel::Say, line)
        };
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        if text.len() > MAX_CHAT {
            self.system_line(&format!("chat line too long ({} bytes, at most {MAX_CHAT})", text.len()));
            return;
        }
        if let Some(session) = &self.session {
            session.chat(channel, text);
        }
    }
}

/// Runs the interactive client until the player quits; returns how the last session ended, for a message after
/// the terminal is restored.
pub fn run(options: TuiOptions) -> Result<Option<SessionEnd>, TuiError> {
    let mut guard = TerminalGuard::enter()?;
    let auto_submit = options.username.is_some() && options.password.is_some();
    let mut app = App::new(options, guard.key_release);
    if auto_submit {
        app.submit();
    }
    while !app.quit {
        guard.terminal.draw(|frame| view::draw(frame, &app))?;
        let deadline = Instant::now() + FRAME;
        // Handle every key that is already waiting, then the network, so typing never lags behind snapshots.
        while event::poll(deadline.saturating_duration_since(Instant::now()))? {
            if let Event::Key(key) = event::read()? {
                app.on_key(key);
            }
            if app.quit {
                break;
            }
        }
        app.drain_network();
        app.update_movement();
    }
    if let Some(session) = app.session.take() {
        app.state.note("logging out...");
        guard.terminal.draw(|frame| view::draw(frame, &app))?;
        app.last_end = session.logout_and_wait(Duration::from_secs(3));
    }
    drop(guard);
    Ok(app.last_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tap_walks_a_short_step_and_auto_repeat_keeps_walking() {
        let t0 = Instant::now();
        let mut axis = Axis::default();
        axis.press(1.0, t0, false, false);
        assert_eq!(axis.value(t0 + TAP / 2), 1.0);
        assert_eq!(axis.value(t0 + TAP + Duration::from_millis(1)), 0.0, "a tap stops by itself");
        // Auto-repeat presses arriving every 40 ms keep the key held.
        let mut now = t0 + Duration::from_millis(400);
        for _ in 0..10 {
            axis.press(1.0, now, false, false);
            now += Duration::from_millis(40);
        }
        assert_eq!(axis.value(now), 1.0);
        assert_eq!(axis.value(now + REPEAT), 0.0, "stops soon after the last repeat");
    }

    #[test]
    fn the_opposite_key_turns_around_and_release_stops() {
        let t0 = Instant::now();
        let mut axis = Axis::default();
        axis.press(1.0, t0, true, false);
        axis.press(-1.0, t0 + Duration::from_millis(10), true, false);
        assert_eq!(axis.value(t0 + Duration::from_millis(20)), -1.0);
        axis.release(1.0);
        assert_eq!(axis.value(t0 + Duration::from_millis(20)), -1.0, "releasing the old key changes nothing");
        axis.release(-1.0);
        assert_eq!(axis.value(t0 + Duration::from_millis(20)), 0.0);
    }
}
