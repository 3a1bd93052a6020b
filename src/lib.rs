//! c2d-gateway: cloud-to-device messages from IoT Hub or an MQTT broker,
//! journaled in sled, delivered to Modbus and serial devices, completed at the
//! hub only after the device answered.
//!
//! The modules follow a message's way: `hub` (link, dialects) → `journal`
//! → `router` → `bus` (workers, Modbus, serial) → `completion` and `report`;
//! `pipeline` ties them together and `daemon` runs it.

pub mod bench;
pub mod bus;
pub mod cli;
pub mod completion;
pub mod config;
pub mod daemon;
pub mod emulator;
pub mod hub;
pub mod journal;
pub mod live;
pub mod message;
pub mod operate;
pub mod pipeline;
pub mod report;
pub mod router;
pub mod sim;
pub mod status;
pub mod telemetry;
