//! Azure IoT Hub MQTT dialect: connection strings, SAS tokens, topics and
//! property bags (pure, no I/O), and the dialect wired to the hub link.

pub mod connstr;
pub mod dialect;
pub mod methods;
pub mod propbag;
pub mod sas;
