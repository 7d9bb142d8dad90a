//! Arbitrary text as bcachetab and as the state file.
//!
//! Parsing never panics; every line kept prints as a line that parses back
//! to the same entry; the one-device lookup finds what the whole parse
//! finds; the state file round-trips; the dirty-data rules answer for every
//! entry and record without a panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

use bcache::tab::rules::{registration, Kernel};
use bcache::tab::file::{self, DeviceIds, DeviceSpec, Tab};
use bcache::tab::records::State;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let tab = Tab::parse(&text, Path::new("fuzz"));
    for e in &tab.entries {
        let again = Tab::parse(&e.to_string(), Path::new("again"));
        assert!(again.errors.is_empty(), "{e} does not parse back: {:?}", again.errors);
        assert_eq!(again.entries.len(), 1);
        let back = &again.entries[0];
        assert_eq!((&back.name, &back.device, back.uuid, back.cset, &back.options), (&e.name, &e.device, e.uuid, e.cset, &e.options));
    }
    for e in tab.entries.iter().take(8) {
        let mut ids = DeviceIds::default();
        match &e.device {
            DeviceSpec::Path(p) => ids.devname = Some(p.to_string_lossy().into_owned()),
            DeviceSpec::Uuid(v) => ids.fs_uuid = Some(v.to_ascii_uppercase()),
            // A line holds labels escaped; a device's ids hold them as they are.
            DeviceSpec::Label(v) => ids.fs_label = Some(file::unescape(v).into_owned()),
            DeviceSpec::PartUuid(v) => ids.part_uuid = Some(v.clone()),
            DeviceSpec::PartLabel(v) => ids.part_name = Some(file::unescape(v).into_owned()),
        }
        let (found, _) = Tab::find_device(&text, Path::new("fuzz"), &ids);
        assert_eq!(found.as_ref(), tab.matching(&ids), "lookup of {}", e.device);
    }
    if let Ok(state) = State::parse(&text, Path::new("fuzz")) {
        let again = State::parse(&state.to_string(), Path::new("again")).expect("a saved state parses");
        // Records of one device met twice are saved merged: the conflict is
        // reported once, by the parse that met it.
        assert!(again.conflicts.is_empty(), "{:?}", again.conflicts);
        assert_eq!((&again.records, again.is_copy), (&state.records, state.is_copy));
        for e in &tab.entries {
            for (register_raw, durable_detach) in [(false, false), (true, false), (true, true)] {
                let kernel = Kernel { register_raw, durable_detach };
                let _ = registration(e, state.get(&e.uuid), state.is_copy, kernel);
            }
        }
    }
});
