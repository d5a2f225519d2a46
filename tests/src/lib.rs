//! Test equipment for waconnect: the contract suites every storage engine must pass, the
//! engines' test factories, and helpers shared by the end-to-end tests and benches.

pub mod connect_sim;
pub mod contract;
pub mod engines;
pub mod twilio;
pub mod twilio_sim;
pub mod wait;

use waconnect_shared::CustomerAddress;

/// A distinct, valid WhatsApp customer for test number `i`.
pub fn customer(i: usize) -> CustomerAddress {
    CustomerAddress::parse(&format!("whatsapp:+1555{i:07}")).expect("valid test number")
}
