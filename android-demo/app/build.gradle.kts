plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.edgekit.demo"
    compileSdk = 34

    defaultConfig {
        applicationId = "dev.edgekit.demo"
        minSdk = 26  // Android 8.0: java.nio.file (atomic slot installs); ed25519 through BouncyCastle below API 33
        targetSdk = 34
        versionCode = 1
        versionName = "0.1.0"
        // The OTA service the demo updates from; with `adb reverse tcp:8080 tcp:8080` a device reaches
        // `edgekit serve` on the development machine at this address.
        buildConfigField("String", "OTA_SERVER", "\"http://127.0.0.1:8080\"")
        buildConfigField("String", "OTA_ENROLMENT_TOKEN", "\"\"")  // edgekit ota enrolment; empty: reports wait
        buildConfigField("String", "OTA_MODEL", "\"digits\"")
        buildConfigField("String", "OTA_CHANNEL", "\"stable\"")
    }

    buildFeatures {
        buildConfig = true
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    kotlinOptions {
        jvmTarget = "17"
    }

    androidResources {
        noCompress += listOf("tflite", "onnx")
    }
}

dependencies {
    implementation(project(":ota-client"))
    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("com.google.ai.edge.litert:litert:1.0.1")          // LiteRT (formerly TensorFlow Lite)
    implementation("com.google.ai.edge.litert:litert-gpu:1.0.1")      // its GPU delegate
    implementation("com.google.ai.edge.litert:litert-gpu-api:1.0.1")
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.20.0")  // for bundles' ONNX artifacts
    implementation("org.bouncycastle:bcprov-jdk18on:1.78.1")          // ed25519 before Android 13
}
