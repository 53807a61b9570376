//! `#[derive(Reload)]`: a settings type says, field by field, what a
//! configuration reload can apply, so no hand-kept list of key names can
//! fall behind the fields (TiKV's `OnlineConfig` derive does the same).
//!
//! Every field is *restart-only* unless marked: a changed value is named
//! (as its dotted key, honouring `#[serde(rename = "…")]`) in the warning a
//! reload gives. Forgetting a mark therefore never hides a change; it
//! at worst names a key the daemon could have applied.
//!
//! - `#[reload(live)]`: the daemon applies a changed value on reload;
//! - `#[reload(nested)]`: a section or list whose own fields say it;
//! - `#[reload(skip)]`: not a setting (derived at load time).

use proc_macro::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields, LitStr, parse_macro_input};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Restart,
    Live,
    Nested,
    Skip,
}

#[proc_macro_derive(Reload, attributes(reload))]
pub fn derive_reload(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let name = &input.ident;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(name, "Reload derives for structs"));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(name, "Reload needs named fields"));
    };
    let mut checks = Vec::new();
    let mut live = Vec::new();
    for field in &fields.named {
        let ident = field.ident.as_ref().expect("named field");
        let key = key_of(field)?;
        match mode_of(field)? {
            Mode::Restart => checks.push(quote! {
                if self.#ident != new.#ident {
                    out.push(crate::settings::join(prefix, #key));
                }
            }),
            Mode::Nested => {
                checks.push(quote! {
                    crate::settings::Reload::restart_changes(
                        &self.#ident, &new.#ident, &crate::settings::join(prefix, #key), out);
                });
                live.push(quote! {
                    crate::settings::Reload::live_keys(
                        &self.#ident, &crate::settings::join(prefix, #key), out);
                });
            }
            Mode::Live => live.push(quote! {
                out.push(crate::settings::join(prefix, #key));
            }),
            Mode::Skip => {}
        }
    }
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics crate::settings::Reload for #name #type_generics #where_clause {
            fn restart_changes(&self, new: &Self, prefix: &str, out: &mut Vec<String>) {
                #(#checks)*
            }
            fn live_keys(&self, prefix: &str, out: &mut Vec<String>) {
                #(#live)*
            }
        }
    })
}

fn mode_of(field: &syn::Field) -> syn::Result<Mode> {
    let mut mode = Mode::Restart;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("reload")) {
        attr.parse_nested_meta(|meta| {
            mode = if meta.path.is_ident("live") {
                Mode::Live
            } else if meta.path.is_ident("nested") {
                Mode::Nested
            } else if meta.path.is_ident("skip") {
                Mode::Skip
            } else {
                return Err(meta.error("expected live, nested or skip"));
            };
            Ok(())
        })?;
    }
    Ok(mode)
}

/// The key as the file writes it: serde's `rename`, else the field's name.
fn key_of(field: &syn::Field) -> syn::Result<String> {
    let mut key = field
        .ident
        .as_ref()
        .expect("named field")
        .to_string()
        .trim_start_matches("r#")
        .to_owned();
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                key = meta.value()?.parse::<LitStr>()?.value();
            } else if meta.input.peek(syn::Token![=]) {
                // Other `key = value` items (default = "…", with = "…").
                meta.value()?.parse::<syn::Expr>()?;
            } else if meta.input.peek(syn::token::Paren) {
                meta.parse_nested_meta(|_| Ok(()))?;
            }
            Ok(())
        })?;
    }
    Ok(key)
}
