pub mod lab;
pub mod status_xml;
