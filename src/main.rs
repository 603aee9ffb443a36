//! Thin binary: parse the command line, call the library, map errors to exit codes
//! (2 = refused input such as an invalid config, 1 = anything else).

use clap::Parser;

fn main() {
    let cli = portier::cli::Cli::parse();
    if let Err(e) = portier::cli::main_with(cli) {
        let refused = e.downcast_ref::<portier::cli::Refused>().is_some();
        eprintln!("portier: {e:#}");
        std::process::exit(if refused { 2 } else { 1 });
    }
}
