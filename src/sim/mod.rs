//! Simulated field devices for the demo and the tests (no hardware needed).

pub mod modbus;
