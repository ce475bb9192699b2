//! Names checked against the catalogues, so a misspelt event type or command kind in a test panics
//! instead of matching nothing (and an assertion that nothing matched passing by accident).

use handlers::Command;

/// `name`, which must be an event type of `bus::EVENT_TYPES`.
pub fn event_type(name: &str) -> &str {
    assert!(
        bus::EVENT_TYPES.contains(&name),
        "{name:?} is not an event type; the catalogue is {:?}",
        bus::EVENT_TYPES
    );
    name
}

/// `name`, which must be a [`Command::kind`].
pub fn command_kind(name: &str) -> &str {
    assert!(
        Command::KINDS.contains(&name),
        "{name:?} is not a command kind; they are {:?}",
        Command::KINDS
    );
    name
}
