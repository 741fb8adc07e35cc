//! Merchants' time zones through the binary, on both databases: set one,
//! import a file, list them back exactly; a bad zone or line is refused with
//! exit 2, naming the line, field and value, and nothing is written.

#[macro_use]
mod common;

use std::process::Command;

use common::{Backend, World};

/// Runs `tally merchants …` on the world's database: exit code, stdout, stderr.
fn merchants(world: &World, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("merchants")
        .args(args)
        .args(["--database-url", &world.database_url])
        .env_remove("TALLY_CONFIG")
        .output()
        .expect("tally runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn zones_are_set_listed_and_checked(backend: Backend) {
    let world = World::new("merchants", backend).await;
    let store = world.store().await;
    let (code, out, err) = merchants(&world, &["set-zone", "m-tokyo", "Asia/Tokyo"]);
    assert_eq!(code, 0, "{out}{err}");

    let file = world.dir.join("zones.csv");
    std::fs::write(
        &file,
        "merchant_id,time_zone\nm-berlin,Europe/Berlin\nm-stjohns,America/St_Johns\n\
         m-lordhowe,Australia/Lord_Howe\nm-tokyo,Asia/Tokyo\nm-utc,UTC\n",
    )
    .unwrap();
    let (code, out, err) = merchants(&world, &["import", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    // m-tokyo was already in Asia/Tokyo: given again, it changes nothing.
    assert!(out.contains("5 merchant zone(s) given, 4 changed"), "{out}");

    let expected = [
        ("m-berlin", "Europe/Berlin"),
        ("m-lordhowe", "Australia/Lord_Howe"),
        ("m-stjohns", "America/St_Johns"),
        ("m-tokyo", "Asia/Tokyo"),
        ("m-utc", "UTC"),
    ];
    let stored: Vec<(String, String)> = store
        .zones()
        .await
        .unwrap()
        .into_iter()
        .map(|z| (z.merchant_id, z.time_zone.name().to_owned()))
        .collect();
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(m, z)| (m.to_string(), z.to_string()))
        .collect();
    assert_eq!(stored, expected);
    let (code, out, _) = merchants(&world, &["list", "--json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["merchant_id"], "m-berlin");
    assert_eq!(listed[0]["time_zone"], "Europe/Berlin");

    // A zone moves: the new one is stored.
    let (code, _, err) = merchants(&world, &["set-zone", "m-utc", "Europe/Berlin"]);
    assert_eq!(code, 0, "{err}");
    let zones = store.zones().await.unwrap();
    assert_eq!(zones.last().unwrap().time_zone.name(), "Europe/Berlin");

    // Refused, naming what is wrong, and nothing written.
    let (code, _, err) = merchants(&world, &["set-zone", "m-x", "Europe/Berlinn"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("Europe/Berlinn") && err.contains("not an IANA time zone"),
        "{err}"
    );
    std::fs::write(
        &file,
        "merchant_id,time_zone\nm-new,Asia/Tokyo\nm-bad,Mars/Olympus\n,UTC\n",
    )
    .unwrap();
    let (code, _, err) = merchants(&world, &["import", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("2 invalid line(s), nothing written"), "{err}");
    assert!(err.contains("line 3: time_zone: \"Mars/Olympus\""), "{err}");
    assert!(err.contains("line 4: field `merchant_id`"), "{err}");
    assert_eq!(store.zones().await.unwrap().len(), 5, "nothing written");
}

on_both_databases!(zones_are_set_listed_and_checked);
