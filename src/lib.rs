//! c2d-gateway: cloud-to-device messages from IoT Hub or an MQTT broker,
//! journaled in sled, delivered to Modbus and serial devices, completed at the
//! hub only after the device answered.

pub mod config;
