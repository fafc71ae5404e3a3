//! Field numbers of gnostic's `openapi.v2` protobuf messages (`openapiv2/OpenAPIv2.proto` in
//! github.com/google/gnostic-models), for the messages this server writes.
//!
//! They are facts of that schema, carried as data: each message is a module of constants named
//! as the `.proto` names its fields, and [`TABLE`] lists them all so a test can compare them with
//! the `.proto`'s declarations.

/// Declares one module per message and the [`TABLE`] of every field.
macro_rules! messages {
    ($($message:ident { $($field:ident = $number:literal),* $(,)? })*) => {
        $(
            #[allow(non_snake_case, non_upper_case_globals, dead_code)]
            pub mod $message {
                $(pub const $field: u32 = $number;)*
            }
        )*
        /// Every `(message, field, number)` declared above.
        #[cfg(test)]
        pub const TABLE: &[(&str, &str, u32)] = &[$($((stringify!($message), stringify!($field), $number),)*)*];
    };
}

messages! {
    Document {
        swagger = 1, info = 2, host = 3, base_path = 4, schemes = 5, consumes = 6, produces = 7,
        paths = 8, definitions = 9, parameters = 10, responses = 11, security = 12,
        security_definitions = 13, tags = 14, external_docs = 15, vendor_extension = 16,
    }
    Info {
        title = 1, version = 2, description = 3, terms_of_service = 4, contact = 5, license = 6,
        vendor_extension = 7,
    }
    Paths { vendor_extension = 1, path = 2 }
    NamedPathItem { name = 1, value = 2 }
    PathItem {
        _ref = 1, get = 2, put = 3, post = 4, delete = 5, options = 6, head = 7, patch = 8,
        parameters = 9, vendor_extension = 10,
    }
    Operation {
        tags = 1, summary = 2, description = 3, external_docs = 4, operation_id = 5, produces = 6,
        consumes = 7, parameters = 8, responses = 9, schemes = 10, deprecated = 11, security = 12,
        vendor_extension = 13,
    }
    ParametersItem { parameter = 1, json_reference = 2 }
    JsonReference { _ref = 1, description = 2 }
    Parameter { body_parameter = 1, non_body_parameter = 2 }
    BodyParameter { description = 1, name = 2, in_ = 3, required = 4, schema = 5, vendor_extension = 6 }
    NonBodyParameter {
        header_parameter_sub_schema = 1, form_data_parameter_sub_schema = 2,
        query_parameter_sub_schema = 3, path_parameter_sub_schema = 4,
    }
    QueryParameterSubSchema {
        required = 1, in_ = 2, description = 3, name = 4, allow_empty_value = 5, type_ = 6,
        format = 7, items = 8, collection_format = 9, default = 10, maximum = 11,
        exclusive_maximum = 12, minimum = 13, exclusive_minimum = 14, max_length = 15,
        min_length = 16, pattern = 17, max_items = 18, min_items = 19, unique_items = 20,
        enum_ = 21, multiple_of = 22, vendor_extension = 23,
    }
    FormDataParameterSubSchema {
        required = 1, in_ = 2, description = 3, name = 4, allow_empty_value = 5, type_ = 6,
        format = 7, items = 8, collection_format = 9, default = 10, maximum = 11,
        exclusive_maximum = 12, minimum = 13, exclusive_minimum = 14, max_length = 15,
        min_length = 16, pattern = 17, max_items = 18, min_items = 19, unique_items = 20,
        enum_ = 21, multiple_of = 22, vendor_extension = 23,
    }
    PathParameterSubSchema {
        required = 1, in_ = 2, description = 3, name = 4, type_ = 5, format = 6, items = 7,
        collection_format = 8, default = 9, maximum = 10, exclusive_maximum = 11, minimum = 12,
        exclusive_minimum = 13, max_length = 14, min_length = 15, pattern = 16, max_items = 17,
        min_items = 18, unique_items = 19, enum_ = 20, multiple_of = 21, vendor_extension = 22,
    }
    HeaderParameterSubSchema {
        required = 1, in_ = 2, description = 3, name = 4, type_ = 5, format = 6, items = 7,
        collection_format = 8, default = 9, maximum = 10, exclusive_maximum = 11, minimum = 12,
        exclusive_minimum = 13, max_length = 14, min_length = 15, pattern = 16, max_items = 17,
        min_items = 18, unique_items = 19, enum_ = 20, multiple_of = 21, vendor_extension = 22,
    }
    PrimitivesItems {
        type_ = 1, format = 2, items = 3, collection_format = 4, default = 5, maximum = 6,
        exclusive_maximum = 7, minimum = 8, exclusive_minimum = 9, max_length = 10,
        min_length = 11, pattern = 12, max_items = 13, min_items = 14, unique_items = 15,
        enum_ = 16, multiple_of = 17, vendor_extension = 18,
    }
    Responses { response_code = 1, vendor_extension = 2 }
    NamedResponseValue { name = 1, value = 2 }
    ResponseValue { response = 1, json_reference = 2 }
    Response { description = 1, schema = 2, headers = 3, examples = 4, vendor_extension = 5 }
    SchemaItem { schema = 1, file_schema = 2 }
    Definitions { additional_properties = 1 }
    NamedSchema { name = 1, value = 2 }
    Schema {
        _ref = 1, format = 2, title = 3, description = 4, default = 5, multiple_of = 6,
        maximum = 7, exclusive_maximum = 8, minimum = 9, exclusive_minimum = 10, max_length = 11,
        min_length = 12, pattern = 13, max_items = 14, min_items = 15, unique_items = 16,
        max_properties = 17, min_properties = 18, required = 19, enum_ = 20,
        additional_properties = 21, type_ = 22, items = 23, all_of = 24, properties = 25,
        discriminator = 26, read_only = 27, xml = 28, external_docs = 29, example = 30,
        vendor_extension = 31,
    }
    AdditionalPropertiesItem { schema = 1, boolean = 2 }
    TypeItem { value = 1 }
    ItemsItem { schema = 1 }
    Properties { additional_properties = 1 }
    ExternalDocs { description = 1, url = 2, vendor_extension = 3 }
    NamedAny { name = 1, value = 2 }
    Any { value = 1, yaml = 2 }
}
